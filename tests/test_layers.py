"""The one-way architecture: ``import gradmask`` loads the core only, the rest on first use; the
layers contract holds without exemptions and the import graph has no cycle, between modules or
between the children of any package (.ci/import_graph.py)."""
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
    """li-blur and the GSNR probe are the engine's own (train.augment, train.gsnr_probe): in a fresh
    interpreter (no test's plug-ins), a config naming one trains without importing anything else; an
    unknown name is refused naming the known."""
    code = """
from gradmask.train import TrainConfig, augment, gsnr_probe, plugins
assert augment.AUGMENTS["li-blur"] is augment.li_blur and plugins.AUGMENTS is augment.AUGMENTS
assert plugins.CONFIG_CALLBACKS["gsnr_every"] is gsnr_probe.gsnr_probe
assert augment.augment_names() == ["crop-flip", "li-blur", "none"], augment.augment_names()
TrainConfig(augment="li-blur").validate()  # a stored config naming it validates
try:
    TrainConfig(augment="no-such")
except ValueError as e:
    print(e)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "augment must be one of ['crop-flip', 'li-blur', 'none'], got 'no-such'" in done.stdout


def test_all_lists_the_core_and_every_lazy_name():
    core = {"GradientMask", "LoGFilter", "MaskHandle", "MaskSettings", "attach", "default_targets", "no_gradient_mask",
            "register_residual_block", "residual_blocks"}
    assert set(gradmask.__all__) == core | set(gradmask._LAZY)


def test_mask_settings_own_the_defaults():
    """One owner per setting: GradientMask, LoGFilter, LI-Map / blur and TrainConfig take the
    defaults of MaskSettings (TrainConfig's groups: the model registry's, gradmask.models.model_groups)."""
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
    assert config.mask_settings == dataclasses.replace(DEFAULTS, groups=4)  # resnet18_narrow's entry
    assert TrainConfig(model="timm:resnet18").mask_settings == DEFAULTS  # no entry: the library's K
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


def _import_graph():
    """.ci/import_graph.py as a module (the cycle finder on grimp's graph, the one lint-imports uses)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / ".ci" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_import_contracts_hold():
    """The layers contract of pyproject.toml (lint-imports, also run by .ci/run), without exemptions."""
    import shutil

    import pytest
    if shutil.which("lint-imports") is None:
        pytest.skip("import-linter is not installed (it is in the test extra)")
    out = subprocess.run(["lint-imports"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "ignore_imports" not in _layers_contract(), "the layers contract has exemptions"


def _layers_contract() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    start = text.index('type = "layers"')
    return text[start:text.index("[[tool.importlinter.contracts]]", start)]


def test_no_import_cycle_between_modules_nor_between_the_children_of_any_package():
    """On grimp's graph (imports inside functions included, TYPE_CHECKING ones not, as in the
    contract): no module imports itself through others, and in no package (gradmask, gradmask.cli,
    gradmask.train, ...) do two children import each other, directly or round a ring."""
    import pytest
    pytest.importorskip("grimp")
    graph = _import_graph()
    edges, children = graph.graph("gradmask")
    assert {"gradmask", "gradmask.cli", "gradmask.train", "gradmask.compare"} <= set(children)
    assert graph.strongly_connected(edges) == []
    assert graph.package_cycles(edges, children) == {}


def test_the_cycle_finder_reports_cycles():
    """The finder itself, on synthetic graphs: a module ring, and two sub-packages importing each
    other only through modules deep inside them."""
    graph = _import_graph()
    assert graph.strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert graph.strongly_connected({"a": {"b"}, "b": set()}) == []
    edges = {"p.x.deep": {"p.y.other"}, "p.y.other": {"p.z"}, "p.z": {"p.x"}, "p.x": set()}
    children = {"p": {"p.x", "p.y", "p.z"}, "p.x": {"p.x.deep"}, "p.y": {"p.y.other"}}
    assert graph.package_cycles(edges, children) == {"p": [["p.x", "p.y", "p.z"]]}
    assert graph.package_cycles({"p.x.deep": {"p.y.other"}}, children) == {}


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
