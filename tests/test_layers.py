"""The one-way architecture: ``import gradmask`` loads the core only, the rest on first use; the
intra-package import graph has no cycles (.ci/import_graph.py)."""
import json
import subprocess
import sys
from pathlib import Path

import gradmask

ROOT = Path(__file__).resolve().parents[1]
CORE = {"gradmask", "gradmask.hooks", "gradmask.laplacian", "gradmask.mask", "gradmask.selection", "gradmask.settings"}


def _loaded_after(code: str) -> set[str]:
    probe = (f"import sys, json\n{code}\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('gradmask', 'scipy', 'matplotlib', 'PIL'))))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_gradmask_loads_the_core_only():
    loaded = _loaded_after("import gradmask")
    assert loaded == CORE, f"unexpected: {sorted(loaded - CORE)}; missing: {sorted(CORE - loaded)}"


def test_lazy_names_load_their_module_on_first_use():
    loaded = _loaded_after("import gradmask\ngradmask.LIMap")
    assert "gradmask.saliency.limap" in loaded
    assert not any(m.startswith(("gradmask.train", "gradmask.compare", "gradmask.reproduce", "gradmask.data"))
                   for m in loaded), sorted(loaded)


def test_every_public_name_resolves():
    for name in gradmask.__all__:
        assert getattr(gradmask, name) is not None, name
    assert set(gradmask.__all__) <= set(dir(gradmask))
    assert gradmask.LIMap is __import__("gradmask.saliency", fromlist=["LIMap"]).LIMap


def test_unknown_name_is_an_attribute_error():
    try:
        _ = gradmask.no_such_thing
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("gradmask.no_such_thing resolved")


def test_the_engine_registers_its_augmentations_and_the_gsnr_probe_itself():
    """li-blur and the GSNR probe are the engine's own (train.augment, train.gsnr_probe): a config
    naming one trains without importing anything else; an unknown name is refused naming the known."""
    import pytest

    from gradmask.train import TrainConfig, augment, gsnr_probe, plugins
    assert augment.AUGMENTS["li-blur"] is augment.li_blur and plugins.AUGMENTS is augment.AUGMENTS
    assert plugins.CONFIG_CALLBACKS["gsnr_every"] is gsnr_probe.gsnr_probe
    assert augment.augment_names() == ["crop-flip", "li-blur", "none"]
    TrainConfig(augment="li-blur").validate()  # a stored config naming it validates
    with pytest.raises(ValueError, match=r"augment must be one of \['crop-flip', 'li-blur', 'none'\], got 'no-such'"):
        TrainConfig(augment="no-such").validate()


def test_all_lists_the_core_and_every_lazy_name():
    core = {"GradientMask", "LoGFilter", "MaskHandle", "MaskSettings", "attach", "default_targets", "no_gradient_mask",
            "register_residual_block", "residual_blocks"}
    assert set(gradmask.__all__) == core | set(gradmask._LAZY)


def test_mask_settings_own_the_defaults():
    """One owner per setting: GradientMask, LoGFilter, LI-Map / blur and TrainConfig take the
    defaults of MaskSettings (TrainConfig's groups excepted: see its docstring)."""
    import dataclasses
    import inspect

    import pytest

    from gradmask.saliency import LIBackgroundBlur, LIMap
    from gradmask.settings import DEFAULTS, MaskSettings
    from gradmask.train import TrainConfig
    values = dataclasses.asdict(DEFAULTS)
    assert gradmask.GradientMask().settings == DEFAULTS
    for cls in (gradmask.LoGFilter, LIMap, LIBackgroundBlur):
        params = inspect.signature(cls).parameters
        for name in ("sigma", "kernel_size", "kernel", "padding"):
            assert params[name].default == values[name], (cls, name)
    config = TrainConfig()
    for name in ("sigma", "kernel_size", "kernel", "padding", "inhibition_rate"):
        assert getattr(config, name) == values[name], name
    assert MaskSettings.of(config) == dataclasses.replace(DEFAULTS, groups=config.groups)
    assert MaskSettings.of(config.replace(mask="none")) is None
    assert gradmask.GradientMask.from_settings(MaskSettings(groups=2, mode="pixel")).settings.mode == "pixel"
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.groups = 3
    for bad, match in [(dict(groups=0), "groups must be an integer >= 1"), (dict(sigma=-1), "sigma must be"),
                       (dict(kernel_size=4), "kernel_size must be an odd integer"), (dict(kernel="x"), "kernel must"),
                       (dict(padding="x"), "padding must"), (dict(inhibition_rate=1.0), r"inhibition_rate must be in"),
                       (dict(mode="none"), "mode must be one of")]:
        with pytest.raises(ValueError, match=match):
            MaskSettings(**bad)
        with pytest.raises(ValueError, match=match.split()[0]):
            gradmask.GradientMask(**bad)


def test_the_mask_works_with_torch_and_numpy_alone():
    """scipy, PIL, matplotlib and tqdm (the experiments extra) made unimportable: the core, the
    models and a masked backward still work."""
    code = """
import sys
for name in ('scipy', 'PIL', 'matplotlib', 'tqdm'):
    sys.modules[name] = None  # import raises ImportError, find_spec says not installed
import torch, gradmask
model = gradmask.create_model('resnet18_narrow', 10)
with gradmask.attach(model, gradmask.GradientMask(groups=4)) as handle:
    model(torch.rand(2, 3, 16, 16)).sum().backward()
    assert all(s['calls'] == 1 for s in handle.stats().values())
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_import_contracts_hold_and_no_subpackage_imports_another_in_a_cycle():
    """The layers contract of pyproject.toml (lint-imports, also run by .ci/run) and the import
    graph of .ci/import_graph.py: no cycle between sub-packages (command modules counted as the
    command line)."""
    import shutil

    import pytest
    if shutil.which("lint-imports") is None:
        pytest.skip("import-linter is not installed (it is in the test extra)")
    out = subprocess.run(["lint-imports"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
    graph = subprocess.run([sys.executable, ".ci/import_graph.py"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout
    assert "sub-package cycles: 0" in graph, graph


def test_the_public_namespace_is_exactly_all():
    """Every public attribute of ``gradmask`` that is not a submodule is listed in ``__all__`` (no
    ``gradmask.importlib`` / ``gradmask.annotations`` leaking from the package's own imports), and
    ``dir(gradmask)`` lists exactly those names plus submodules."""
    import types
    probe = ("import json, types, gradmask\n"
             "print(json.dumps([n for n in dir(gradmask) if not n.startswith('_')\n"
             "                  and not isinstance(getattr(gradmask, n), types.ModuleType)]))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    public = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert public == set(gradmask.__all__), (sorted(public - set(gradmask.__all__)),
                                              sorted(set(gradmask.__all__) - public))
    modules = {n: getattr(gradmask, n) for n in vars(gradmask) if isinstance(getattr(gradmask, n), types.ModuleType)}
    assert all(m.__name__ == f"gradmask.{n}" for n, m in modules.items()), modules  # subpackages only
    assert "importlib" not in dir(gradmask) and "annotations" not in dir(gradmask)


def test_every_public_name_is_documented_with_shapes_and_in_the_api_reference():
    """docs/api.md (mkdocstrings, built by `mkdocs build --strict` in CI) renders every name of
    ``gradmask.__all__``; each has a docstring, and those that take or return tensors state shapes."""
    import inspect
    import re
    api = (ROOT / "docs" / "api.md").read_text()
    tensors = {"GradCAM", "GradCAMPlusPlus", "GradientMask", "LIBackgroundBlur", "LIMap", "LoGFilter", "Normalized",
               "attach", "box_iou", "create_model", "fgsm", "gsnr", "localization_scores", "saliency_box",
               "saliency_boxes", "select_images"}
    for name in gradmask.__all__:
        assert re.search(rf"^::: gradmask\.[\w.]*\.{name}$", api, re.M), f"{name} is not in docs/api.md"
        doc = inspect.getdoc(getattr(gradmask, name)) or ""
        assert len(doc) > 40, f"gradmask.{name} has no docstring"
        if name in tensors:
            assert re.search(r"\((N|M|H)\b|\(\.\.\.", doc), f"gradmask.{name}'s docstring states no shapes"
