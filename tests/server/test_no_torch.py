"""The web process never imports torch: prove it with torch made unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from repo_paths import REPO_ROOT

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None  # any "import torch" now raises ImportError
    import _wsgi
    client = _wsgi.app.test_client()
    health = client.get("/health").get_json()
    assert health["engine"] == "fallback", health
    config = open("label_config/interactive_brush.xml").read()
    setup = client.post("/setup", json={"schema": config, "project": "1.1"})
    assert setup.status_code == 200, setup.get_json()
    body = {"tasks": [{"id": 1, "data": {"image": "/data/local-files/?d=missing.png"}}], "label_config": config,
            "params": {"context": None}}
    assert client.post("/predict", json=body).status_code == 200
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
    assert not [m for m in loaded if sys.modules[m] is not None], loaded
    print("ok")
    """
)


def test_web_process_runs_without_torch(tmp_path):
    env = {"XSAM_ENGINE": "auto", "XSAM_MODEL_DIR": str(tmp_path / "none"), "LOCAL_FILES_DOCUMENT_ROOT": str(tmp_path),
           "MEDIA_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


def test_import_has_no_side_effects():
    script = "import sys, _wsgi, xsam_backend.server.app, xsam_backend.labelstudio.render; print(_wsgi._app is None)"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"
