"""``euclip eval --device``: a device this machine lacks, or no device at all, is named before any work."""

from __future__ import annotations

import pytest
import torch

from euclip.cli import main

CASES = {"tpu": "--device tpu: not a device; use auto, cpu, cuda or cuda:N",
         "xla": "--device xla: euclip runs on cpu, cuda and mps devices, not 'xla'"}
if not torch.cuda.is_available():
    CASES["cuda"] = "--device cuda: no CUDA GPU is available here"


@pytest.mark.parametrize("command", [["eval", "zeroshot"], ["eval", "all"]])
@pytest.mark.parametrize("device", list(CASES))
def test_an_unusable_eval_device_is_one_clear_line(tmp_path, capsys, command, device):
    code = main([*command, str(tmp_path / "no-such-run"), "--device", device])
    err = capsys.readouterr().err
    assert code == 2 and CASES[device] in err and "Traceback" not in err, err
