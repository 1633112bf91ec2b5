"""Third-party plugins load through the same `posture` entry points as the built-ins."""

from __future__ import annotations

import json
from pathlib import Path

from support import User

PLUGIN = '''
from posture.hookspecs import hookimpl
from posture.policy.rules import Finding, Rule


class DeadlineRule(Rule):
    name = "friday_deploy"
    default_level = "l3"
    summary = "no deploys on Fridays"

    def evaluate(self, facts, settings):
        fired = (facts.project / "DEPLOY").exists()
        return Finding(fired, "a DEPLOY file is present" if fired else "no DEPLOY file")


@hookimpl
def posture_rules():
    return [DeadlineRule()]
'''


def install_plugin(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    (site / "posture_friday-1.0.dist-info").mkdir(parents=True)
    (site / "posture_friday-1.0.dist-info" / "entry_points.txt").write_text("[posture]\nfriday = posture_friday\n")
    (site / "posture_friday-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: posture-friday\nVersion: 1.0\n")
    (site / "posture_friday.py").write_text(PLUGIN)
    return site


def test_a_third_party_rule_fires_and_can_be_remapped(user: User, make_repo, tmp_path: Path) -> None:
    site = install_plugin(tmp_path)
    user.env["PYTHONPATH"] = str(site)
    user.write_config('identities = ["me@example.com"]\n')
    repo = make_repo(files={"DEPLOY": "now\n"})
    doc = json.loads(user.run("explain", str(repo), "--json").stdout)
    rule = next(r for r in doc["rules"] if r["rule"] == "friday_deploy")
    assert rule == {"rule": "friday_deploy", "fired": True, "level": "l3", "evidence": "a DEPLOY file is present"}
    assert doc["level"] == "l3"
    # the user's [rules] table accepts the plugin's rule name, and a typo is still an error
    user.write_config('identities = ["me@example.com"]\n[rules]\nfriday_deploy = "l4"\n')
    assert json.loads(user.run("explain", str(repo), "--json").stdout)["level"] == "l4"
    user.write_config('[rules]\nfriday_deplyo = "l4"\n')
    proc = user.run("explain", str(repo))
    assert proc.returncode == 64 and "rules.friday_deplyo: unknown key" in proc.stderr


def test_entry_point_parser(tmp_path: Path) -> None:
    from posture import plugins

    text = "[console_scripts]\nposture = x:y\n\n[posture]\n# comment\nbwrap = posture.backends.bwrap\n rules=posture.policy.rules \n[other]\nz = q\n"
    assert plugins._group_in(text, "posture") == [("bwrap", "posture.backends.bwrap"), ("rules", "posture.policy.rules")]


def test_plugin_rule_remap_on_the_exec_fast_path(user: User, make_repo, tmp_path: Path) -> None:
    user.env["PYTHONPATH"] = str(install_plugin(tmp_path))
    user.write_config('[rules]\nfriday_deploy = "l4"\nuntrusted_repo = "l2"\n')
    repo = make_repo(files={"DEPLOY": "now\n"})
    proc = user.run("exec", str(repo), "--", "true")
    assert proc.returncode == 69 and "friday_deploy" in proc.stderr, proc.stderr
