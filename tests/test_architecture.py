"""The web side never imports torch or transformers."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, project_env


def test_web_side_loads_no_torch() -> None:
    code = (
        "import sys, django; django.setup(); import browser.urls; "
        "from django.test import Client; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    env = project_env(DJANGO_SETTINGS_MODULE="browser.settings")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compute_core_has_no_django() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "workers" / "compute").rglob("*.py")
        if "django" in path.read_text() or "celery" in path.read_text()
    ]
    assert offenders == []
