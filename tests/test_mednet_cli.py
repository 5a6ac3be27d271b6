"""mednet's command line on shardcache's disk tier, with the config file the README shows.

``mednet train pasa docs/examples/mednet_montgomery.py -e 1 -x cpu`` twice: the first run
decodes each image once, the second none (counted by an audit hook that sees every PNG
opened in the process); ``mednet predict`` (no decode either) and ``mednet classify
evaluate`` run on what training wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.mednet_suite import mednet_sdist, montgomery_data
from support.processes import TESTS_DIR

pytestmark = pytest.mark.slow

CONFIG = TESTS_DIR.parent / "docs" / "examples" / "mednet_montgomery.py"
MEDNET = Path(sys.executable).with_name("mednet")

COUNTER = """
import os, sys

def _count(event, arguments):
    if event == "open" and str(arguments[0]).endswith(".png"):
        with open(os.environ["PNG_OPEN_LOG"], "a") as log:
            log.write(str(arguments[0]) + "\\n")

sys.addaudithook(_count)
"""


def _mednet(arguments: list[str], env: dict[str, str], cwd: Path) -> str:
    result = subprocess.run(
        [str(MEDNET), *arguments],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, (
        f"mednet {arguments[0]}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    )
    return result.stdout + result.stderr


def test_mednet_trains_twice_decoding_once_then_predicts_and_evaluates(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    xdg = montgomery_data(mednet_sdist(), tmp_path_factory.mktemp("montgomery"))
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "sitecustomize.py").write_text(COUNTER)
    env = dict(os.environ)
    env.update(
        XDG_CONFIG_HOME=str(xdg),
        SHARDCACHE_DIR=str(tmp_path / "cache"),
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(
            [str(tmp_path / "hooks"), *filter(None, [env.get("PYTHONPATH")])]
        ),
    )
    opened = []
    for run in ("first", "second"):
        env["PNG_OPEN_LOG"] = str(tmp_path / f"{run}.log")
        (tmp_path / f"{run}.log").touch()
        train = ["train", "pasa", str(CONFIG), "-e", "1", "-x", "cpu", "-o", str(tmp_path / run)]
        _mednet(train, env, tmp_path)
        opened.append(len((tmp_path / f"{run}.log").read_text().splitlines()))
    out = tmp_path / "second"
    env["PNG_OPEN_LOG"] = str(tmp_path / "predict.log")
    (tmp_path / "predict.log").touch()
    predict = ["predict", "pasa", str(CONFIG), "-x", "cpu", "-w", str(out), "-o", str(out)]
    _mednet(predict, env, tmp_path)
    opened.append(len((tmp_path / "predict.log").read_text().splitlines()))
    # The first run's prepare_data decodes every image of every subset once (train 88,
    # validation 22, test 28); the second run and predict decode none.
    assert opened == [138, 0, 0]
    predictions = json.loads((out / "predictions.json").read_text())
    assert {name: len(rows) for name, rows in predictions.items()} == {
        "train": 88,
        "validation": 22,
        "test": 28,
    }
    _mednet(
        ["classify", "evaluate", "-p", str(out / "predictions.json"), "-o", str(out)], env, tmp_path
    )
    assert (out / "evaluation.json").exists()
