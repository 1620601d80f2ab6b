"""Create a project folder from the bundled fraud example.

init_project(Path("fraud"))      # writes fraud/backline.toml, fraud/data/, fraud/.gitignore
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from backline.core.config import CONFIG_FILE
from backline.core.errors import WorkspaceError

STATE_DIR = ".backline"


def example_dir(name: str = "fraud") -> Path:
    """The bundled example: inside the installed package, or examples/ of a source checkout."""
    packaged = Path(str(resources.files("backline"))) / "examples" / name
    if (packaged / CONFIG_FILE).is_file():
        return packaged
    checkout = Path(__file__).resolve().parents[3] / "examples" / name
    if (checkout / CONFIG_FILE).is_file():
        return checkout
    raise WorkspaceError(  # pragma: no cover - a broken install
        f"the bundled example {name!r} is missing from this install; reinstall backline."
    )


def init_project(target: Path, *, force: bool = False, example: str = "fraud") -> Path:
    """Copy the example into `target`; refuse to overwrite a project unless `force`."""
    target = target.resolve()
    if target.exists() and not target.is_dir():
        raise WorkspaceError(f"{target} is a file. Choose a folder name for the new project.")
    if (target / CONFIG_FILE).exists() and not force:
        raise WorkspaceError(
            f"{target} already holds a backline project ({CONFIG_FILE}). Use another folder, or "
            "pass --force to replace its config (data and state are kept)."
        )
    source = example_dir(example)
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name in ("__pycache__", STATE_DIR):
            continue
        dest = target / item.name
        if item.is_dir():
            shutil.copytree(
                item, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(item, dest)
    (target / STATE_DIR).mkdir(exist_ok=True)
    gitignore = target / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text(f"{STATE_DIR}/\ndata/*\n!data/.gitkeep\n")
    return target
