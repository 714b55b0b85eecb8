"""The class-names trap: plain lists in another order than the sorted folders are refused; mappings align names."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from euclip.eval.classnames import resolve_classnames
from euclip.model import GeometricCLIP, ModelConfig

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def image_folder(root, folders):
    rng = np.random.default_rng(0)
    for name in folders:
        (root / name).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name / "a.png")
    return ImageFolder(str(root))


def test_natural_order_list_of_word_folders_is_refused(tmp_path):
    """The measured case: digit folders named by words sort eight, five, four, ...; a list zero..nine does not."""
    dataset = image_folder(tmp_path / "digits", WORDS)
    assert dataset.classes[:3] == ["eight", "five", "four"]
    names = tmp_path / "names.txt"
    names.write_text("\n".join(WORDS) + "\n")
    with pytest.raises(ValueError, match=r"line 1 names 'zero', but that is class folder 10.*folder<TAB>name"):
        resolve_classnames(str(names), dataset.classes)
    # The same names in sorted-folder order are accepted as given.
    names.write_text("\n".join(sorted(WORDS)) + "\n")
    assert resolve_classnames(str(names), dataset.classes) == sorted(WORDS)


def test_mapping_file_aligns_names_with_folders(tmp_path):
    dataset = image_folder(tmp_path / "digits", WORDS)
    mapping = tmp_path / "map.tsv"
    mapping.write_text("# folder\tname\n" + "".join(f"{w}\tthe digit {i}\n" for i, w in enumerate(WORDS)))
    names = resolve_classnames(str(mapping), dataset.classes)
    for label, folder in enumerate(dataset.classes):
        assert names[label] == f"the digit {WORDS.index(folder)}"
    mapping.write_text("zero\tnull\none\tuno\n")
    with pytest.raises(ValueError, match=r"without a name \['eight'"):
        resolve_classnames(str(mapping), dataset.classes)
    mapping.write_text("".join(f"{w}\t{w}\n" for w in WORDS) + "ten\tzehn\n")
    with pytest.raises(ValueError, match=r"no such folder\(s\) \['ten'\]"):
        resolve_classnames(str(mapping), dataset.classes)
    mapping.write_text("zero\tnull\nzero\tnada\n")
    with pytest.raises(ValueError, match="named twice"):
        resolve_classnames(str(mapping), dataset.classes)


def test_numbered_folders(tmp_path):
    """Folders 0..11 sort 0, 1, 10, 11, 2, ...: a plain list could follow either order, so it is refused."""
    twelve = image_folder(tmp_path / "twelve", [str(i) for i in range(12)])
    assert twelve.classes[:4] == ["0", "1", "10", "11"]
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"class {i}" for i in range(12)) + "\n")
    with pytest.raises(ValueError, match="numbers, sorted as text"):
        resolve_classnames(str(names), twelve.classes)
    # Ten folders 0..9 sort the same either way: a natural-order list is right and accepted.
    ten = image_folder(tmp_path / "ten", [str(i) for i in range(10)])
    names.write_text("\n".join(WORDS) + "\n")
    assert resolve_classnames(str(names), ten.classes) == WORDS


def test_uncheckable_lists_and_defaults(tmp_path):
    wnids = ["n01440764", "n01443537", "n01484850"]
    dataset = image_folder(tmp_path / "imagenet", wnids)
    names = tmp_path / "names.txt"
    names.write_text("tench\ngoldfish\ngreat white shark\n")
    assert resolve_classnames(str(names), dataset.classes) == ["tench", "goldfish", "great white shark"]
    assert resolve_classnames(None, ["golden_retriever", "tabby_cat"]) == ["golden retriever", "tabby cat"]
    names.write_text("tench\ngoldfish\n")
    with pytest.raises(ValueError, match="2 class names for 3 class folders"):
        resolve_classnames(str(names), dataset.classes)
    # Readable folder names, a list naming them in another order (with underscores for spaces): refused.
    pets = image_folder(tmp_path / "pets", ["golden_retriever", "siamese_cat"])
    names.write_text("Siamese cat\nGolden retriever\n")
    with pytest.raises(ValueError, match="line 1 names 'Siamese cat'"):
        resolve_classnames(str(names), pets.classes)


def test_cli_refuses_and_accepts(tmp_path, capsys):
    from euclip.cli import main

    data = tmp_path / "digits"
    image_folder(data, WORDS)
    ckpt = tmp_path / "run" / "checkpoints" / "latest.pt"
    ckpt.parent.mkdir(parents=True)
    model = GeometricCLIP(ModelConfig(model="tiny"))
    torch.save({"config": {"model": asdict(model.config)}, "model": model.state_dict()}, ckpt)
    names = tmp_path / "names.txt"
    names.write_text("\n".join(WORDS) + "\n")
    args = ["eval", "zeroshot", str(tmp_path / "run"), "--data", str(data), "--device", "cpu", "--templates", "simple"]
    assert main([*args, "--classnames", str(names)]) == 2
    assert "folder<TAB>name" in capsys.readouterr().err
    mapping = tmp_path / "map.tsv"
    mapping.write_text("".join(f"{w}\t{w}\n" for w in WORDS))
    out = tmp_path / "zs.json"
    assert main([*args, "--classnames", str(mapping), "--output", str(out)]) == 0
    assert json.loads(out.read_text())["num_samples"] == 10
