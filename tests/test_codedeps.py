"""The library files each stage depends on, found from the imports."""

import ast
import os
import re
from pathlib import Path

from medclassify.codedeps import PACKAGE_DIR, imported_modules, module_closure, rule_inputs


def names(files):
    return {str(f.relative_to(PACKAGE_DIR)) for f in files}


def test_closure_follows_relative_and_package_imports():
    files = names(module_closure("manifest"))
    assert {"manifest.py", "io/__init__.py", "io/dicom.py", "privacy.py", "errors.py", "__init__.py"} <= files


def test_light_stages_do_not_depend_on_training_code():
    for stage in ("manifest", "splits", "cache", "datasets.demo"):
        files = names(module_closure(stage))
        assert not files & {"training.py", "data.py", "models/__init__.py", "evaluation/__init__.py"}, stage


def test_stages_that_only_read_the_config_do_not_depend_on_image_code():
    # config.py checks the preprocess options; the image code that applies them is not its import
    for stage in ("config", "splits"):
        files = names(module_closure(stage))
        assert "preprocess_options.py" in files and "preprocessing.py" not in files, stage


def test_training_depends_on_every_model_module_it_builds_with():
    files = names(module_closure("training"))
    assert {"training.py", "data.py", "gpu.py", "cache.py", "models/__init__.py", "models/resnet.py"} <= files


def test_a_submodule_brings_its_package_init():
    assert {"datasets/__init__.py", "datasets/demo.py"} <= names(module_closure("datasets.demo"))


def test_imports_outside_the_package_are_ignored():
    assert all(not name.startswith(("numpy", "pandas")) for name in imported_modules("splits"))


def test_rule_inputs_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    # Snakemake keeps a job's input paths: absolute ones would rerun every job of a moved project.
    for workdir in (PACKAGE_DIR.parent, tmp_path):
        monkeypatch.chdir(workdir)
        paths = rule_inputs("training")
        assert paths and all(not os.path.isabs(path) for path in paths)
        assert all(os.path.isfile(path) for path in paths)
        assert {Path(path).resolve() for path in paths} == set(module_closure("training"))


def test_an_edited_module_is_parsed_again_within_one_process(tmp_path, monkeypatch):
    # Imports are parsed once per process (a dry run asks for every rule's closure); an edit between
    # two calls must still be seen, and a caller changing the returned set must not change the next.
    package = tmp_path / "medclassify"
    package.mkdir()
    for name in ("__init__", "first", "second", "third"):
        (package / f"{name}.py").write_text("")
    monkeypatch.setattr("medclassify.codedeps.PACKAGE_DIR", package)
    (package / "first.py").write_text("from . import second\n")
    found = imported_modules("first")
    assert found == {"second"}
    found.add("stray")
    assert imported_modules("first") == {"second"}

    (package / "first.py").write_text("from . import second\nfrom .third import name\n")
    assert imported_modules("first") == {"second", "third"}


def test_imports_inside_functions_classes_branches_handlers_and_cases_are_found(tmp_path, monkeypatch):
    package = tmp_path / "medclassify"
    package.mkdir()
    nested = {
        "in_function": "def f():\n    from . import {0}\n",
        "in_class_method": "class C:\n    def m(self):\n        import medclassify.{0}\n",
        "in_else": "if False:\n    pass\nelse:\n    from .{0} import name\n",
        "in_handler": "try:\n    pass\nexcept ImportError:\n    from . import {0}\n",
        "in_finally": "try:\n    pass\nfinally:\n    from . import {0}\n",
        "in_loop_else": "for _ in ():\n    pass\nelse:\n    from . import {0}\n",
        "in_with": "with open(__file__):\n    from . import {0}\n",
        "in_case": "match 1:\n    case 1:\n        from . import {0}\n",
    }
    for name in ("__init__", *nested):
        (package / f"{name}.py").write_text("")
    (package / "first.py").write_text("".join(code.format(name) for name, code in nested.items()))
    monkeypatch.setattr("medclassify.codedeps.PACKAGE_DIR", package)
    assert imported_modules("first") == set(nested)


def _rules_code_and_scripts():
    """(rule, modules given to library_code, script path) of every rule that runs a script."""
    rules_dir = PACKAGE_DIR.parent / "workflow" / "rules"
    found = []
    for path in sorted(rules_dir.glob("*.smk")):
        for block in re.split(r"^rule ", path.read_text(), flags=re.M)[1:]:
            name = block.split(":", 1)[0]
            code = re.search(r"code=library_code\(([^)]*)\)", block)
            script = re.search(r'script:\s*"([^"]+)"', block)
            if script:
                modules = re.findall(r'"([\w.]+)"', code.group(1)) if code else []
                found.append((name, modules, (rules_dir / script.group(1)).resolve()))
    return found


def test_every_library_module_a_rule_script_imports_is_among_the_rules_code_inputs():
    # workflow/scripts/train.py imported workflow_paths, which train_head's and finetune's code inputs left out.
    checked = _rules_code_and_scripts()
    assert len(checked) >= 10
    for rule, modules, script in checked:
        imported = {node.module.removeprefix("medclassify.") for node in ast.walk(ast.parse(script.read_text()))
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medclassify.")}
        missing = names(module_closure(*imported)) - names(module_closure("runlog", *modules))
        assert not missing, f"rule {rule} ({script.name}) runs {sorted(missing)}, not among its code inputs"
