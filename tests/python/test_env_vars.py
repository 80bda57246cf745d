"""The README's list of environment variables is the code's: every variable a
program reads (std::env, clap `env =`, the launch contract's readers, the settings'
`S3_ORCH_<NAME>`, the catalogue's `${VAR}`) is listed, and every listed one is read."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
READS = re.compile(
    r'(?:\bvar|\bvar_os|\bnum)\(\s*"([A-Z][A-Z0-9_]+)"'
    r'|\bpair\(\s*"([A-Z][A-Z0-9_]+)",\s*"([A-Z][A-Z0-9_]+)"'
    r'|\benv\s*=\s*"([A-Z][A-Z0-9_]+)"'
    r'|\btool\([^,()]*,\s*"([A-Z][A-Z0-9_]+)"'
)
# Read by libraries on the programs' behalf (object_store, tracing), not by name in this code.
BY_LIBRARIES = {"AWS_ENDPOINT", "AWS_ALLOW_HTTP", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RUST_LOG"}


def read_by_code():
    names = set()
    for crate in ["shards", "ingest", "trainer", "orchestrator"]:
        for f in (ROOT / crate / "src").rglob("*.rs"):
            text = f.read_text(encoding="utf-8")
            text = text.split("#[cfg(test)]\nmod tests")[0]
            for m in READS.finditer(text):
                names.update(g for g in m.groups() if g)
    settings = (ROOT / "orchestrator/src/settings.rs").read_text(encoding="utf-8")
    block = re.search(r"^layer! \{(.*?)^\}", settings, re.S | re.M).group(1)
    names.update("S3_ORCH_" + f.upper() for f in re.findall(r"^\s+([a-z][a-z0-9_]*):", block, re.M))
    catalogue = (ROOT / "manifests/datasets.toml").read_text(encoding="utf-8")
    names.update(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", catalogue))
    return names


def listed_in_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    names = set()
    for row in section.splitlines():
        if not row.startswith("| `"):
            continue
        first = row.split("|")[1]
        found = re.findall(r"`([A-Z][A-Z0-9_]+)`", first)
        if "S3_ORCH_<SETTING>" in first:  # the settings' names, each behind the prefix
            found = ["S3_ORCH_" + n for n in found]
        names.update(found)
    return names


def test_every_variable_read_is_listed_and_every_listed_one_read():
    code, readme = read_by_code(), listed_in_readme()
    assert code - readme == set(), f"read but not in the README: {sorted(code - readme)}"
    assert readme - code - BY_LIBRARIES == set(), f"listed but never read: {sorted(readme - code - BY_LIBRARIES)}"
    assert {"RANK", "S3_ORCH_RANKS", "SAM3D_RAW", "S3_JOB_TOKEN"} <= code, "the scan sees the readers"
