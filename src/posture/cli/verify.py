"""`posture verify`: the promises, tried from inside fresh sessions on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import PathArg, app, emit_json, err, out


@app.command()
def verify(
    path: Optional[Path] = PathArg,
    level: str = typer.Option("all", "--level", help="l2, l3, l4, or all (default: every level whose backend can run here; the others are reported as not run)."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Agent profile whose view the sessions get (default: the configured one)."),
    as_json: bool = typer.Option(False, "--json", help='A list of {"level", "promise", "held", "evidence"} (documented in the README).'),
) -> int:
    """Start a fresh session at each level, run posture's probe inside, and show which promises hold here.

    Exit 0 every promise held, 1 one did not (its row says why), 69 a requested level could not run.
    """
    from ..errors import EX_UNAVAILABLE
    from ..verify import run
    from ..verify.promises import SESSION

    outcome = run.verify(path, level, profile)
    if as_json:
        emit_json([r.to_json() for r in outcome.rows])
    else:
        width = max((len(r.promise) for r in outcome.rows), default=10)
        for r in outcome.rows:
            mark = {True: "held", False: "NOT HELD", None: "untested"}[r.held]
            out(f"{r.level}  {r.promise:{width}}  {mark:8}  {r.evidence}")
    for r in outcome.rows:
        if r.evidence.startswith("WARNING"):
            err(f"posture: warning: {r.level} {r.promise}: {r.evidence.removeprefix('WARNING: ')}")
    broken = outcome.broken()
    for r in broken:
        err(f"posture: NOT HELD at {r.level}: {r.promise}: {r.evidence}")
    code = outcome.exit_code()
    skipped = [r.level for r in outcome.rows if r.promise == SESSION]
    if code == EX_UNAVAILABLE:
        err(f"posture: could not run {', '.join(outcome.unavailable or skipped)} here (see the rows; `posture doctor` shows how to fix it)")
    elif not broken:
        ran = sorted({r.level for r in outcome.rows if r.promise != SESSION})
        err(f"posture: every promise tried held at {', '.join(ran)}" + (f" ({', '.join(skipped)} not run here)" if skipped else ""))
    return code
