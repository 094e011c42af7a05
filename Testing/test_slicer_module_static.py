"""Static checks of the Slicer module (there is no Slicer application here to load it)."""
from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "PPIRExtension" / "PPIR"
UI = MODULE / "Resources" / "UI" / "PPIR.ui"
sys.path.insert(0, str(MODULE))

from PPIRLib import dependencies  # noqa: E402

# What Slicer's own Python has without installing anything (besides the standard library).
SLICER_PROVIDES = {"slicer", "qt", "ctk", "vtk", "vtkmodules", "numpy", "SimpleITK", "PPIRLib",
                   "SampleData"}   # a core module of every Slicer
# The parameter node type each bound widget class can show (Slicer's parameterNodeWrapper connectors).
WIDGET_FOR_TYPE = {"Role": "QComboBox", "Protocol": "QComboBox", "str": "QLineEdit", "int": "QSpinBox",
                   "bool": "QCheckBox", "pathlib.Path": "ctkPathLineEdit", "float": "ctkSliderWidget",
                   "vtkMRMLScalarVolumeNode": "qMRMLNodeComboBox", "vtkMRMLTransformNode": "qMRMLNodeComboBox"}
# The Python module each extension the PPIR extension depends on (EXTENSION_DEPENDS) provides.
EXTENSION_MODULES = {"PyTorch": "PyTorchUtils"}


def _module_sources() -> dict[Path, str]:
    return {path: path.read_text() for path in [MODULE / "PPIR.py", *sorted((MODULE / "PPIRLib").glob("*.py"))]}


def _ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def _parameters() -> dict[str, str]:
    """PPIRParameterNode's fields: name -> annotation source."""
    tree = ast.parse((MODULE / "PPIR.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PPIRParameterNode")
    return {s.target.id: ast.unparse(s.annotation) for s in cls.body if isinstance(s, ast.AnnAssign)}


def test_module_sources_compile_for_the_oldest_slicer_python():
    """Slicer 5.8 runs Python 3.9: the module must at least load there to say what it needs."""
    for path, source in _module_sources().items():
        compile(source, str(path), "exec")
        ast.parse(source, str(path), feature_version=(3, 9))


def test_an_old_slicer_python_is_refused_with_the_reason():
    from PPIRLib.package import check_python
    with pytest.raises(RuntimeError, match="Slicer 5.10 or later.*is 3.9"):
        check_python((3, 9))
    check_python((3, 12))
    from PPIRLib.package import PPIR_PYTHON
    pyproject = (ROOT / "PPIRLogic" / "pyproject.toml").read_text()
    assert f'requires-python = ">={PPIR_PYTHON[0]}.{PPIR_PYTHON[1]}"' in pyproject


def test_every_ui_name_the_module_uses_exists_in_the_ui_file():
    source = (MODULE / "PPIR.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    tree = ast.parse(source)
    rows = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "ROW_WIDGETS")
    used |= {ast.literal_eval(k) for k in rows.keys} | {ast.literal_eval(v) for v in rows.values}
    missing = used - set(_ui_widgets())
    assert len(used) > 20 and not missing, f"PPIR.py uses widgets PPIR.ui lacks: {sorted(missing)}"


def test_ui_widgets_are_qt_ctk_or_slicer_classes():
    root = ET.parse(UI).getroot()
    classes = {w.get("class") for w in root.iter("widget")}
    foreign = {c for c in classes if not re.match(r"^(Q[A-Z]|ctk[A-Z]|qMRML|qSlicer)", c)}
    assert not foreign, f"not Qt, CTK or Slicer widgets: {foreign}"
    declared = {c.findtext("class"): c.findtext("header") for c in root.iter("customwidget")}
    custom = {c for c in classes if not c.startswith("Q")}
    assert custom <= set(declared), f"custom widgets not declared: {custom - set(declared)}"
    assert all(header == f"{name}.h" for name, header in declared.items())


def test_bound_widgets_match_parameter_types():
    parameters = _parameters()
    bound = {}
    for name, widget in _ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0", f"{name}: SlicerParameterName must be a dynamic property"
                bound[prop.findtext("string")] = widget.get("class")
    assert set(bound) <= set(parameters), f"the .ui binds unknown parameters: {set(bound) - set(parameters)}"
    for parameter, widget_class in bound.items():
        annotation = parameters[parameter]
        if "Choice(" in annotation:
            expected = "QComboBox"
        else:
            base = re.sub(r"^Annotated\[([\w.]+),.*\]$", r"\1", annotation)
            expected = WIDGET_FOR_TYPE[base]
            if widget_class == "ctkSliderWidget":
                assert "WithinRange" in annotation, f"{parameter}: a slider needs a bounded float"
        assert widget_class == expected, f"{parameter} ({annotation}) is bound to a {widget_class}"
    unbound = set(parameters) - set(bound)
    assert not unbound, f"settings without a widget: {unbound}"


def test_node_selectors_offer_the_node_types_of_their_parameters_and_a_scene():
    """Each bound node selector lists its parameter's class; output selectors create, the others only choose."""
    parameters, widgets = _parameters(), _ui_widgets()
    root = ET.parse(UI).getroot()
    scene_receivers = {c.findtext("receiver") for c in root.iter("connection")
                       if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    selectors = {name: w for name, w in widgets.items() if w.get("class") == "qMRMLNodeComboBox"}
    assert len(selectors) == 7 and set(selectors) <= scene_receivers
    for name, w in selectors.items():
        props = {p.get("name"): p for p in w.findall("property")}
        parameter = props["SlicerParameterName"].findtext("string")
        assert [s.text for s in props["nodeTypes"].iter("string")] == [parameters[parameter]]
        creates = props["addEnabled"].findtext("bool") == "true"
        assert creates == parameter.startswith("output"), f"{name}: only output selectors create nodes"
        if creates:
            assert props["noneDisplay"].findtext("string").startswith("Create new")


def _visible_rows():
    """PPIR.visibleRows, taken from the module's source (PPIR.py itself imports Slicer)."""
    tree = ast.parse((MODULE / "PPIR.py").read_text())
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "visibleRows")
    namespace: dict = {}
    exec(compile(ast.Module([function], []), "PPIR.py", "exec"), namespace)
    return namespace["visibleRows"]


def test_mask_selectors_offer_label_maps_and_show_only_for_their_owner():
    widgets = _ui_widgets()
    for party in ("moving", "fixed"):
        props = {p.get("name"): p for p in widgets[f"{party}MaskSelector"].findall("property")}
        assert props["SlicerParameterName"].findtext("string") == f"{party}Mask"
        assert props["showChildNodeTypes"].findtext("bool") == "true"      # label maps are scalar volumes' children
        assert props["noneEnabled"].findtext("bool") == "true"            # optional
        assert props["noneDisplay"].findtext("string").startswith("None")
        volume = {p.get("name"): p for p in widgets[f"{party}VolumeSelector"].findall("property")}
        assert volume["showChildNodeTypes"].findtext("bool") == "false"   # a label map is no volume to register
    visible = _visible_rows()
    for role in ("moving", "fixed", "dealer", "local"):
        rows = visible(role, True)
        assert rows["movingMaskLabel"] == (role in ("moving", "local")) == rows["movingVolumeLabel"]
        assert rows["fixedMaskLabel"] == (role in ("fixed", "local")) == rows["fixedVolumeLabel"]


def test_the_panels_defaults_are_the_first_preset_and_presets_set_only_parameters():
    import importlib
    presets = importlib.import_module("PPIRLib.presets")
    tree = ast.parse((MODULE / "PPIR.py").read_text())
    mapping = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "PRESET_PARAMETERS")
    mapping = ast.literal_eval(mapping)
    assert set(mapping) == set(presets.FIELDS) and set(mapping.values()) <= set(_parameters())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PPIRParameterNode")
    defaults = {s.target.id: ast.literal_eval(s.value) for s in cls.body if isinstance(s, ast.AnnAssign)
                and s.value is not None and s.target.id in mapping.values()}
    first = presets.load_presets()[0]
    assert first.matches({field: defaults[name] for field, name in mapping.items()}), \
        f"the panel's defaults are not the first preset ({first.title})"


def test_module_imports_only_what_slicer_has():
    """At import time, only what Slicer ships; base requirements (installed before a run) inside functions."""
    base = {re.split("[=>]=", spec)[0] for spec in dependencies.read_requirements(MODULE / "Resources" / "requirements.txt")}
    assert "psutil" in base
    depends = re.search(r'set\(EXTENSION_DEPENDS "([^"]*)"\)', (ROOT / "CMakeLists.txt").read_text()).group(1).split()
    base |= {EXTENSION_MODULES[extension] for extension in depends}   # modules of extensions the Manager installs
    for path, source in _module_sources().items():
        tree = ast.parse(source)
        in_functions = {id(node) for function in ast.walk(tree) if isinstance(function, ast.FunctionDef)
                        for node in ast.walk(function)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                allowed = top in sys.stdlib_module_names or top in SLICER_PROVIDES or (
                    id(node) in in_functions and top in base)
                assert allowed, f"{path.name} imports {name}, which Slicer's Python lacks (the ppir subprocess does " \
                                f"the work; base requirements and declared extensions may be imported in functions)"


def _cmake_list(text: str, variable: str) -> list[str]:
    body = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S).group(1)
    return [item.replace("${MODULE_NAME}", "PPIR") for item in body.split()]


def test_cmake_lists_name_every_module_file():
    text = (MODULE / "CMakeLists.txt").read_text()
    scripts = set(_cmake_list(text, "MODULE_PYTHON_SCRIPTS"))
    resources = set(_cmake_list(text, "MODULE_PYTHON_RESOURCES"))
    on_disk = {str(p.relative_to(MODULE)) for p in MODULE.rglob("*.py") if "__pycache__" not in p.parts}
    assert scripts == on_disk
    assert resources == {str(p.relative_to(MODULE)) for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    top = (ROOT / "CMakeLists.txt").read_text()
    for folder in re.findall(r"add_subdirectory\((\S+)\)", top):
        assert (ROOT / folder / "CMakeLists.txt").is_file()
    for url in re.findall(r'"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/([^"]+)"', top):
        assert (ROOT / url).is_file(), f"the extension's metadata points at a missing file: {url}"
    assert "WITH_GENERIC_TESTS" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert (ROOT / "LICENSE").is_file()


def _pins(path: Path) -> dict[str, str]:
    found = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s#]+)", path.read_text(), re.M)
    return {name.lower(): version for name, version in found}


def test_module_requirements_pin_the_tested_versions():
    tested = _pins(ROOT / "PPIRLogic" / "requirements.txt")
    tested["crypten"] = re.search(r"crypten==([\d.]+)", (ROOT / "Makefile").read_text()).group(1)
    for protocol in ("fhe", "mpc"):
        files = dependencies.requirement_files(protocol)
        for path in files["normal"] + files["no_deps"]:
            for name, version in _pins(path).items():
                assert tested[name] == version, f"{path.name} pins {name}=={version}, the tests use {tested[name]}"
            for spec in dependencies.read_requirements(path):
                assert dependencies.unmet([spec]) == [], f"{path.name}: the tests use a version out of {spec}"
    assert "crypten==0.4.1" in dependencies.read_requirements(dependencies.requirement_files("mpc")["no_deps"][0])


def test_unmet_requirements_are_found():
    import numpy
    assert dependencies.unmet(["numpy", f"numpy=={numpy.__version__}"]) == []
    assert dependencies.unmet(["numpy==0.0.1", "no-such-package-for-ppir"]) == ["numpy==0.0.1",
                                                                               "no-such-package-for-ppir"]
    # this test environment has everything both protocols need
    assert dependencies.missing_for("fhe") == {"normal": [], "no_deps": []}
    assert dependencies.missing_for("mpc") == {"normal": [], "no_deps": []}


def test_requirement_clauses_beyond_pins_and_ranges_are_refused(tmp_path):
    (tmp_path / "r.txt").write_text("scipy<=1.0\n")
    with pytest.raises(ValueError, match="scipy<=1.0"):
        dependencies.read_requirements(tmp_path / "r.txt")
    import numpy
    assert dependencies.unmet([f"numpy>={numpy.__version__}", "numpy>=1.0,<999", f"numpy=={numpy.__version__}"]) == []
    assert dependencies.unmet(["numpy>=999.0", "numpy>=1.0,<1.1", "numpy==0.1"]) == \
        ["numpy>=999.0", "numpy>=1.0,<1.1", "numpy==0.1"]


def test_platforms_without_packages_are_named_before_anyone_tries():
    """The measured wheel matrix for Slicer's Python 3.12 (docs/slicer-extension.md)."""
    assert dependencies.wheel_problem("tenseal", "Windows", "AMD64") is None
    assert dependencies.wheel_problem("tenseal", "Darwin", "x86_64", (13, 6)) is None
    assert "macOS 14.0 or later" in dependencies.wheel_problem("tenseal", "Darwin", "arm64", (13, 6))
    assert "Windows ARM64" in dependencies.wheel_problem("tenseal", "Windows", "ARM64")
    assert dependencies.wheel_problem("torch", "Darwin", "x86_64", (13, 0)) is None
    assert dependencies.unsupported("fhe") is None and dependencies.unsupported("mpc") is None   # installed here


def test_torch_from_another_extension_is_used_never_replaced():
    assert dependencies.torch_problem() is None   # this Python's torch
    assert dependencies.torch_problem("2.0.1+cpu") is None
    assert dependencies.torch_problem(None) == "PyTorch is not installed"
    assert "update it in the PyTorch Utils module" in dependencies.torch_problem("1.13.1")


def test_catalogue_entry_agrees_with_the_extension_metadata():
    """The Extensions Index entry (PPIRExtension/PPIR.json) and CMakeLists.txt say the same things."""
    import json
    entry = json.loads((ROOT / "PPIRExtension" / "PPIR.json").read_text())
    top = (ROOT / "CMakeLists.txt").read_text()
    meta = dict(re.findall(r'set\((EXTENSION_\w+) "([^"]*)"\)', top))
    assert entry["$schema"].endswith("/slicer-extension-catalog-entry-schema-v1.0.0.json#")
    assert entry["category"] == meta["EXTENSION_CATEGORY"]
    assert entry["scm_url"] == meta["EXTENSION_HOMEPAGE"] and entry["scm_type"] == "git"
    assert entry["build_dependencies"] == meta["EXTENSION_DEPENDS"].split()   # the index builds them first
    assert top.startswith("cmake_minimum_required(VERSION 3.20.6...3.22.6 FATAL_ERROR)")   # Slicer 5.10's template


def test_what_will_be_sent_is_said_per_role_before_the_first_start():
    from PPIRLib.disclosure import disclosure
    from PPIRLib.jobs import RunSettings
    moving = disclosure(RunSettings(role="moving", protocol="mpc", address="b.example:7000", dealer="d.example:7002",
                                    sampling="gms", share_result="warped"))
    assert "b.example:7000" in moving and "dealer at d.example:7002" in moving
    assert "outline your anatomy" in moving and "warped onto the fixed grid" in moving
    assert "nothing of the result" in disclosure(RunSettings(role="moving", share_result="none", sampling="urs"))
    fixed = disclosure(RunSettings(role="fixed", protocol="fhe", address="0.0.0.0:7000"))
    assert "geometry" in fixed and "no secret key is sent" in fixed and "0.0.0.0:7000" in fixed
    assert "never receives image data" in disclosure(RunSettings(role="dealer", protocol="mpc"))
    assert disclosure(RunSettings(role="local", protocol="clear")).startswith("Nothing leaves this computer")
    assert "mask" not in moving and "mask" not in fixed
    masked_fixed = disclosure(RunSettings(role="fixed", protocol="fhe", address="0.0.0.0:7000"), masked=True)
    assert "which of the moving party's samples lie inside your mask (the mask itself is never sent" in masked_fixed
    masked_moving = disclosure(RunSettings(role="moving", protocol="fhe", sampling="urs"), masked=True)
    assert "drawn inside your mask: they show where it falls on the fixed grid" in masked_moving
