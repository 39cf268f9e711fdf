"""`dvc exp run -S key=value` keeps params.yaml's documentation: DVC edits the file with ruamel's
round-trip loader, so every comment survives and only the set values change. (Layout does not fully
survive: DVC 3.67 writes flow lists like ``[8, 12, 12]`` in block style and re-wraps long flow
mappings — the values are equal, no information is lost.)"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGE = "stages:\n  s:\n    cmd: echo ${ratio} ${sandwich.lora_rank} > out.txt\n    params: [ratio, sandwich.lora_rank]\n    outs: [out.txt]\n"


def test_exp_run_set_param_keeps_comments_and_layout(tmp_path):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}

    def run(*cmd):
        return subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "dvc.yaml").write_text(STAGE)
    run("git", "init", "-q")
    run("dvc", "init", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "base")
    before = (tmp_path / "params.yaml").read_text()
    run("dvc", "exp", "run", "-S", "ratio=0.2", "-S", "sandwich.lora_rank=4")
    after = (tmp_path / "params.yaml").read_text()
    assert (tmp_path / "out.txt").read_text().split() == ["0.2", "4"]
    assert _comments(after) == _comments(before)  # every comment, in order, verbatim
    expected = yaml.safe_load(before)
    expected["ratio"], expected["sandwich"]["lora_rank"] = 0.2, 4
    assert yaml.safe_load(after) == expected


def _comments(text: str) -> list[str]:
    """Comment texts of a YAML file (``#`` outside quotes; params.yaml quotes no ``#``)."""
    return [m.group(0).rstrip() for line in text.splitlines() if (m := re.search(r"#.*", line))]
