"""Where posture keeps its config, state and data (XDG), never inside a sandbox's view."""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP = "posture"


def _xdg(var: str, default: str, fallback: str) -> Path:
    """`$var/posture` when $var is an absolute path, else `~/default/posture`, as platformdirs has it
    on Linux (inlined there: importing platformdirs costs about 5 ms on every posture call)."""
    if not sys.platform.startswith("linux"):
        import platformdirs

        return Path(getattr(platformdirs, fallback)(APP, appauthor=False))
    path = os.environ.get(var, "")
    if not os.path.isabs(path):
        home = os.environ.get("HOME", "")
        if not os.path.isabs(home):  # a relative or missing HOME counts as unset
            import pwd

            try:
                home = pwd.getpwuid(os.getuid()).pw_dir
            except KeyError:
                home = ""
        if not os.path.isabs(home):
            raise RuntimeError(f"could not determine the home directory for '~/{default}', set an absolute HOME or XDG variable")
        path = os.path.join(home.rstrip("/") or "/", default)
    return Path(os.path.join(path, APP))


def config_dir() -> Path:
    """User config directory: $XDG_CONFIG_HOME/posture."""
    return _xdg("XDG_CONFIG_HOME", ".config", "user_config_dir")


def user_config_file() -> Path:
    """The user's config file, `config.toml` in the config directory."""
    return config_dir() / "config.toml"


def state_dir() -> Path:
    """State directory ($XDG_STATE_HOME/posture): sessions, audit log, agent state, approvals."""
    return _xdg("XDG_STATE_HOME", ".local/state", "user_state_dir")


def data_dir() -> Path:
    """Data directory ($XDG_DATA_HOME/posture): fetched kernels and other large assets."""
    return _xdg("XDG_DATA_HOME", ".local/share", "user_data_dir")


def runtime_dir() -> Path:
    """Short, private directory for sockets: $XDG_RUNTIME_DIR/posture, else /tmp/posture-<uid>."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return ensure_private_dir(Path(base) / APP)
    path = Path(f"/tmp/{APP}-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    import stat

    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        from .errors import Refused

        raise Refused(f"{path} is not a private directory of this user", fix="remove it, or set XDG_RUNTIME_DIR to a private directory")
    return path


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) with mode 0700 and return it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.chmod(path, 0o700)
    except PermissionError:
        pass
    return path


def home_dir() -> Path:
    """The invoking user's home directory."""
    return Path(os.environ.get("HOME") or Path.home())


def posture_owned_dirs() -> list[Path]:
    """Directories that hold posture's own state; no view may ever include them."""
    return [config_dir(), state_dir(), data_dir()]
