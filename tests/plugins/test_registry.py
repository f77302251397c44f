"""The TensorRT plugin library against the contract (docs/engine-io.md).

CPU tests (everywhere): the ops and fields of docs/engine-io.md are exactly the creators listed in
plugins/registry.cpp and the fields each plugin's FieldTable declares (parsed from the sources, so
they fail when either side drifts); the loader's error names the paths it tried.
`tensorrt` tests (where the package imports): load the built library, find every creator in the
registry, create each plugin from fields, reject bad fields.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from lowbit import trt_plugins

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "plugins"


# ---- parsing the two sides ----------------------------------------------------------------------

def doc_ops() -> dict[str, dict[str, str]]:
    """{op: {field: 'int' | 'float'}} from the "Plugin ops" section of docs/engine-io.md."""
    text = (ROOT / "docs" / "engine-io.md").read_text()
    section = text.split("## Plugin ops", 1)[1]
    ops = {}
    for m in re.finditer(r"^### `(\w+)`.*?$(.*?)(?=^### |\Z)", section, re.M | re.S):
        body = m.group(2)
        fields_sentence = re.search(r"Fields:(.*?)Inputs:", body, re.S)
        assert fields_sentence, f"no 'Fields: ... Inputs:' in the doc section of {m.group(1)}"
        fields, pending = {}, []
        # Backticked names; a following "int(s)" / "float(s)" types every name still untyped.
        for tok in re.finditer(r"`(\w+)`|\b(int|float)s?\b", fields_sentence.group(1)):
            if tok.group(1):
                pending.append(tok.group(1))
            elif pending:
                for name in pending:
                    fields[name] = tok.group(2)
                pending = []
        assert not pending, f"{m.group(1)}: fields without a type in the doc: {pending}"
        ops[m.group(1)] = fields
    return ops


def registry_creators() -> list[str]:
    """Creator classes in the LOWBIT_PLUGIN_CREATORS list of plugins/registry.cpp."""
    src = (PLUGINS / "registry.cpp").read_text()
    m = re.search(r"#define LOWBIT_PLUGIN_CREATORS\(X\)((?:[^\n]*\\\n)*[^\n]*)", src)
    assert m, "LOWBIT_PLUGIN_CREATORS list not found in plugins/registry.cpp"
    return re.findall(r"X\((\w+)\)", m.group(1))


def plugin_of_creator(creator: str) -> tuple[str, dict[str, str]]:
    """(plugin name, {field: kind}) of a creator class, from its header and source."""
    for header in PLUGINS.glob("*/*Plugin.h"):
        h = header.read_text()
        m = re.search(rf"class {creator} final : public PluginCreatorBase<(\w+)>", h)
        if not m:
            continue
        name = re.search(r'static constexpr char const\* kNAME = "(\w+)";', h)
        assert name, f"{header}: no kNAME"
        src = header.with_suffix(".cpp").read_text()
        fields = {f: k for k, f in re.findall(r'(int|float)Field\(\s*"(\w+)"', src)}
        return name.group(1), fields
    raise AssertionError(f"creator {creator} of registry.cpp is declared in no plugins/*/*Plugin.h")


# ---- CPU tests ----------------------------------------------------------------------------------

def test_doc_lists_the_five_ops():
    assert list(doc_ops()) == list(trt_plugins.PLUGIN_NAMES)


def test_registry_creators_match_doc_ops_and_fields():
    docs = doc_ops()
    plugins = dict(plugin_of_creator(c) for c in registry_creators())
    assert sorted(plugins) == sorted(docs), (
        f"registry.cpp serves {sorted(plugins)}, docs/engine-io.md lists {sorted(docs)}")
    for op, fields in docs.items():
        assert plugins[op] == fields, f"{op}: plugin fields {plugins[op]} != doc fields {fields}"


def test_registry_registers_every_creator_both_ways():
    src = (PLUGINS / "registry.cpp").read_text()
    # Both paths expand the one list: static registration and the getCreators array.
    assert re.search(r"REGISTER_TENSORRT_PLUGIN\(Creator\)", src)
    assert src.count("LOWBIT_PLUGIN_CREATORS(") >= 3
    exported = re.findall(r"^\s+(\w+);", (PLUGINS / "exports.map").read_text(), re.M)
    assert exported == ["getCreators", "setLoggerFinder"]


def test_missing_library_error_names_every_path(tmp_path):
    paths = [tmp_path / "a" / trt_plugins.LIB_NAME, tmp_path / "b" / trt_plugins.LIB_NAME]
    with pytest.raises(trt_plugins.PluginLibraryNotFoundError) as e:
        trt_plugins.load(paths=paths)
    msg = str(e.value)
    for p in paths:
        assert f"{p} (absent)" in msg
    assert "cmake" in msg and trt_plugins.ENV_VAR in msg


def test_unloadable_library_error_carries_the_loader_message(tmp_path):
    bad = tmp_path / trt_plugins.LIB_NAME
    bad.write_bytes(b"not an ELF file")
    with pytest.raises(trt_plugins.PluginLibraryNotFoundError) as e:
        trt_plugins.load(paths=[bad])
    assert str(bad) in str(e.value) and "absent" not in str(e.value)


def test_env_var_path_is_tried_first(monkeypatch, tmp_path):
    monkeypatch.setenv(trt_plugins.ENV_VAR, str(tmp_path / "x.so"))
    paths = trt_plugins.candidate_paths()
    assert paths[0] == tmp_path / "x.so"
    assert paths[1] == ROOT / "build" / trt_plugins.LIB_NAME


# ---- TensorRT tests -----------------------------------------------------------------------------

# Valid fields of one instance of each op (values as the builder writes them).
VALID_FIELDS = {
    "LowbitQuantInt8": {"norm": 1, "static": 0, "eps": 1e-5},
    "LowbitAtomQuant": {"norm": 1, "reorder": 1, "eps": 1e-5, "n_outliers": 128,
                        "group_size": 128, "clip": 0.9},
    "LowbitW8A8Gemm": {"per_token": 1},
    "LowbitW4A4Gemm": {"group_size": 128},
    "LowbitKv4Attention": {"layer": 0, "num_heads": 8, "num_kv_heads": 2, "head_size": 128,
                           "tokens_per_block": 64, "k_group_size": 128, "v_group_size": 128,
                           "sliding_window": 0},
}


def field_collection(trt, fields: dict[str, float]):
    out = []
    for name, v in fields.items():
        if isinstance(v, int):
            out.append(trt.PluginField(name, np.array([v], np.int32), trt.PluginFieldType.INT32))
        else:
            out.append(trt.PluginField(name, np.array([v], np.float32),
                                       trt.PluginFieldType.FLOAT32))
    return trt.PluginFieldCollection(out)


@pytest.fixture(scope="module")
def trt_creators():
    import tensorrt as trt

    trt_plugins.load()
    return trt, trt_plugins.creators()


@pytest.mark.tensorrt
def test_every_creator_lists_exactly_its_fields(trt_creators):
    _, creators = trt_creators
    docs = doc_ops()
    for op, creator in creators.items():
        names = [f.name for f in creator.field_names]
        assert sorted(names) == sorted(docs[op]), f"{op}: creator lists {names}"
        assert creator.plugin_namespace == "lowbit" and creator.plugin_version == "1"


@pytest.mark.tensorrt
@pytest.mark.parametrize("op", list(VALID_FIELDS))
def test_create_each_plugin_from_fields(trt_creators, op):
    trt, creators = trt_creators
    plugin = creators[op].create_plugin(op, field_collection(trt, VALID_FIELDS[op]),
                                        trt.TensorRTPhase.BUILD)
    assert plugin is not None


@pytest.mark.tensorrt
@pytest.mark.parametrize("op,fields", [
    ("LowbitW8A8Gemm", {}),                                   # required field missing
    ("LowbitW8A8Gemm", {"per_token": 1, "typo": 1}),          # unknown field
    ("LowbitW4A4Gemm", {"group_size": 96}),                   # unsupported value
    ("LowbitQuantInt8", {"norm": 1, "static": 0}),            # eps required with norm
    ("LowbitKv4Attention", {**VALID_FIELDS["LowbitKv4Attention"], "head_size": 96}),
])
def test_bad_fields_are_rejected(trt_creators, op, fields):
    trt, creators = trt_creators
    plugin = creators[op].create_plugin(op, field_collection(trt, fields), trt.TensorRTPhase.BUILD)
    assert plugin is None
