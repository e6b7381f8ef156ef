"""Size-targeted plans through the command line (issue 23): `convert --target-size/--target-bpw` writes a file
within budget and prints the plan beside the neighbouring presets (size, bits/weight, bytes per token), `--json`
carries the plan, `--plan-out` writes a preset that reproduces the file byte for byte, bad combinations are one
red line with nothing written; `inspect` shows a planned file's quantize.plan.* keys and each group's types, and
`card` lists a planned file as planned for its budget, not as a preset."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from checkpoints import Spec
from gguf import GGUFReader
from gguf import GGUFValueType as V
from gguf_fuzzing import Doc, encode
from typer.testing import CliRunner, Result

from marco_gguf.base.units import human_bytes
from marco_gguf.cli.app import app
from marco_gguf.gguf_io.info import read_info
from marco_gguf.quant.imatrix import read_text

pytestmark = pytest.mark.slow

MINI = Spec(dtype="f32")  # 6.9 M parameters: every tensor at its smallest type makes 2.3 MB, F16 13.7 MB


def run(*args: object, columns: int | None = None) -> Result:
    """The CLI in-process; `columns` widens the terminal Rich draws tables for (else 80: cells wrap)."""
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": str(columns)} if columns else None)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def plan_keys(path: Path) -> dict:
    """The file's quantize.plan.* keys as gguf-py (not our reader) decodes them, without the prefix."""
    fields = GGUFReader(path).fields
    return {k.removeprefix("quantize.plan."): f.contents() for k, f in fields.items() if k.startswith("quantize.plan.")}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """One output folder for every plan of the module: the measured errors are cached beside the files."""
    return tmp_path_factory.mktemp("plans")


@pytest.fixture(scope="module")
def planned(checkpoint, reference_imatrix, folder):
    """target option -> (the planned GGUF, convert's --json output), made through the CLI once each."""
    made: dict[tuple[str, ...], tuple[Path, dict]] = {}

    def get(*target: str, imatrix: bool = False) -> tuple[Path, dict]:
        key = (*target, str(imatrix))
        if key not in made:
            im = ["--imatrix", reference_imatrix(MINI)] if imatrix else []
            r = run("convert", checkpoint(MINI), *target, *im, "--outdir", folder, "-t", 2, "--json", "--force")
            assert r.exit_code == 0, r.output
            d = json.loads(r.stdout)
            made[key] = (Path(d["path"]), d)
        return made[key]

    return get


TARGETS = [  # (reason, target options, the label the file is named after, the budget in bytes or None for bpw)
    ("a size in decimal megabytes (10^6 bytes)", ["--target-size", "3.5MB"], "3.5MB", 3_500_000),
    ("a size in binary mebibytes, spelled out", ["--target-size", "4MiB"], "4MiB", 4 * 2**20),
    ("a plain number is bytes", ["--target-size", "5000000"], "5000000B", 5_000_000),
    ("bits per weight", ["--target-bpw", "4.5"], "4.5BPW", None),
]


@pytest.mark.parametrize("reason,target,label,budget", TARGETS, ids=[t[0] for t in TARGETS])
def test_target_fits_and_prints_the_plan_beside_the_presets(reason, target, label, budget, checkpoint, planned, folder):
    path, d = planned(*target)
    r = run("convert", checkpoint(MINI), *target, "--outdir", folder, "-t", 2, "--force", columns=200)
    assert r.exit_code == 0, r.output
    info = read_info(path)
    assert path.name == f"Marco-Test-Instruct-P{label}.gguf" and sha(path) == sha(Path(d["path"]))
    if budget is not None:
        assert 0.99 * budget <= info.file_size <= budget
    else:
        assert 0.99 * 4.5 <= info.bits_per_weight <= 4.5
    plan = d["plan"]
    assert plan["plan"]["size_bytes"] == info.file_size and plan["plan"]["bytes_per_token"] == info.bytes_per_token
    assert plan["plan"]["bits_per_weight"] == pytest.approx(info.bits_per_weight, abs=5e-4)
    assert re.search(rf"^plan +P{re.escape(label)} \(file type MOSTLY_\w+, the type of most bytes\)$", r.stdout, re.M)
    out = " ".join(r.stdout.split())  # the table may wrap a cell onto a second line
    assert f"plan for {label}: {plan['objective']}" in " ".join(r.stdout.replace("│", " ").split())
    sizes = [p["size_bytes"] for p in plan["neighbours"]]
    assert min(sizes) <= info.file_size <= max(sizes), "a preset just smaller and one just larger"
    for p, name in [(plan["plan"], f"P{label} (plan)"), *((p, p["preset"]) for p in plan["neighbours"])]:
        row = [name, f"({p['size_bytes']:,} B)", f"{p['bits_per_weight']:.3f}", human_bytes(p["bytes_per_token"])]
        assert all(cell in out for cell in row), (row, r.stdout)


def test_json_carries_the_plan(planned):
    path, d = planned("--target-size", "3.5MB")
    plan = d["plan"]
    assert (plan["target"], plan["budget_bytes"]) == ("3.5MB", 3_500_000)
    assert plan["objective"].startswith("least total squared error (no imatrix")
    quantized = Counter(t.type for t in read_info(path).tensors if t.type != "F32")  # norms and routers stay F32
    assert plan["types"] == dict(sorted(quantized.items()))
    sizes = [p["size_bytes"] for p in plan["presets"]]
    assert sizes == sorted(sizes) and all(n in plan["presets"] for n in plan["neighbours"])
    assert plan_keys(path)["budget_bytes"] == 3_500_000 and plan_keys(path)["target"] == "3.5MB"


def test_plan_out_reproduces_the_file_byte_for_byte(checkpoint, reference_imatrix, folder, tmp_path):
    """--plan-out's TOML given back as --preset (with the same imatrix) writes the very same bytes."""
    imatrix, toml = reference_imatrix(MINI), tmp_path / "plan.toml"
    first = tmp_path / "planned.gguf"
    r = run("convert", checkpoint(MINI), "--target-bpw", 3.6, "--imatrix", imatrix, "-o", first, "--plan-out", toml)
    assert r.exit_code == 0, r.output
    assert f"plan written to {toml} (use it with --preset)" in " ".join(r.stdout.split())
    again = tmp_path / "again.gguf"
    r = run("convert", checkpoint(MINI), "--preset", toml, "--imatrix", imatrix, "-o", again)
    assert r.exit_code == 0, r.output
    assert sha(again) == sha(first) and plan_keys(again)["target"] == "3.6BPW"


def test_a_target_with_calibrate_plans_with_the_imatrix_and_sensitivity_made_on_the_way(checkpoint, tmp_path):
    """--calibrate makes the imatrix from a temporary Q8_0 and measures the gains on it (and the groups' at the
    first plan's types), then plans with both (IQ types among the candidates); the folder keeps the file and the
    three caches only. A second budget reads the gains back: the temporary Q8_0 is the same file again, so the
    cache's key matches."""
    text = tmp_path / "calib.txt"
    text.write_text(read_text(None)[0][:2500], encoding="utf-8")
    out = tmp_path / "out"
    r = run("convert", checkpoint(MINI), "--target-bpw", 3.0, "--outdir", out, "-t", 2, "--json", "--calibrate", text)
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    path, plan = Path(d["conversion"]["path"]), d["conversion"]["plan"]
    assert path.name == "Marco-Test-Instruct-i1-P3BPW.gguf" and 0.99 * 3.0 <= read_info(path).bits_per_weight <= 3.0
    keys = plan_keys(path)
    assert keys["objective"].startswith("least total imatrix-weighted") and "IQ2_XXS" in keys["types"]
    assert "measured sensitivity" in keys["objective"] and keys["sensitivity"] == "calibration-Q8_0.gguf"
    assert plan["plan"]["size_bytes"] == path.stat().st_size
    assert plan["gains_measured"] == sum(plan["types"].values())
    cache, gains = Path(plan["cache"]), Path(plan["gains_cache"])  # no temporary Q8_0 or imatrix left beside them
    joint = gains.name.replace(".sensitivity-", ".joint-")
    assert sorted(p.name for p in out.iterdir()) == sorted([path.name, cache.name, gains.name, joint])
    assert cache.name.startswith("Marco-Test-Instruct-i1.measure-")
    rest = sum(plan["types"].values()) - 1  # the fixture's embedding is tied: the output matrix
    assert [(g["name"], g["tensors"]) for g in plan["groups"]] == [("token_embd", 1), ("the rest", rest)]
    r = run("convert", checkpoint(MINI), "--target-bpw", 3.5, "--outdir", out, "-t", 2, "--calibrate", text)
    assert r.exit_code == 0, r.output
    assert f"sensitivity per tensor: all from the cache, kept in {gains}" in r.stdout
    assert "groups noised at once, measured / estimated: token_embd " in r.stdout


REFUSALS = [  # (reason, options after SOURCE, the one line's fragment)
    (
        "both targets at once",
        ["--target-size", "3MB", "--target-bpw", "4"],
        "give one of --target-size and --target-bpw",
    ),
    ("a target with --preset", ["--target-bpw", "4", "--preset", "q4_k_m"], "give --preset or a target"),
    ("a target with --tensor-type", ["--target-bpw", "4", "--tensor-type", "attn_q=q8_0"], "give it or a target"),
    (
        "a budget below the smallest file these types make",
        ["--target-size", "1MB"],
        "--target-size 1MB is below the smallest file these candidate types make (2,",
    ),
    ("a budget above the F16 file", ["--target-size", "8GB"], "--target-size 8GB is above the F16 file"),
    (
        "a space before the unit is allowed: '8 GiB' reads as 8GiB",
        ["--target-size", "8 GiB"],
        "--target-size 8GiB is above the F16 file (",
    ),
    ("a size in words", ["--target-size", "eight"], "--target-size 'eight': not a size"),
    ("a unit that is no unit", ["--target-size", "8G"], "--target-size '8G': not a size"),
    ("a negative size", ["--target-size", "-8GB"], "--target-size '-8GB': not a size"),
    ("a zero size", ["--target-size", "0"], "--target-size '0': not a size"),
    ("zero bits per weight", ["--target-bpw", "0"], "--target-bpw 0.0: not a positive number of bits per weight"),
    ("--types naming an unknown type", ["--target-bpw", "4", "--types", "q4_k,q9_z"], "--types: 'q9_z' is not a type"),
    (
        "an IQ type without an imatrix",
        ["--target-bpw", "4", "--types", "q4_k,iq4_xs"],
        "--types: IQ4_XS is an IQ type, which the plan uses only with an importance matrix",
    ),
    (
        "--max-bytes-per-token below what the smallest types read",
        ["--target-bpw", "4", "--max-bytes-per-token", "1000"],
        "--max-bytes-per-token 1,000 is below the least these candidate types read per token",
    ),
    (
        "--max-bytes-per-token of zero",
        ["--target-bpw", "4", "--max-bytes-per-token", "0"],
        "--max-bytes-per-token 0: not a positive number",
    ),
    (
        "--types naming nothing: ',' planned with every type",
        ["--target-bpw", "4", "--types", ","],
        "--types: ',' is not a type the plan can use",
    ),
    (
        "--types too large for the budget: it said the plan needs IQ types, which --types had left out",
        ["--target-size", "3.5MB", "--types", "q8_0"],
        "bytes, every tensor at its smallest type) — give a larger target, or add smaller types to --types",
    ),
    ("NaN bits per weight", ["--target-bpw", "nan"], "--target-bpw nan: not a positive number of bits per weight"),
    ("bits per weight above F16's", ["--target-bpw", "100"], "--target-bpw 100 is above the F16 file (16.023 bits/"),
    ("--types without a target", ["--types", "q4_k"], "go with --target-size or --target-bpw"),
    ("--plan-out without a target", ["--plan-out", "{out}/p.toml"], "go with --target-size or --target-bpw"),
    ("--sensitivity without a target", ["--sensitivity", "{out}/m.gguf"], "give --target-size or --target-bpw with it"),
    (
        "--sensitivity naming no file",
        ["--target-bpw", "4", "--sensitivity", "{out}/missing.gguf"],
        "missing.gguf: no such file",
    ),
]


@pytest.mark.parametrize("reason,options,fragment", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_bad_combinations_are_one_red_line(reason, options, fragment, checkpoint, tmp_path):
    out = tmp_path / "out"
    plan = tmp_path / "plan.toml"
    options = [o.format(out=out) for o in options]
    if "--plan-out" not in options and any(o.startswith("--target") for o in options):
        options += ["--plan-out", str(plan)]
    r = run("convert", checkpoint(MINI), *options, "--outdir", out, "-t", 2)
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and fragment in r.stderr, r.stderr
    assert "Traceback" not in r.output and r.stdout == ""
    assert (not out.exists() or not any(out.iterdir())) and not plan.exists()


def test_an_existing_output_is_refused_before_planning_writes_anything(checkpoint, tmp_path):
    """It was refused only when the file was written: the measurements planning had cached beside it stayed."""
    mine = tmp_path / "mine.gguf"
    mine.write_text("mine")
    r = run("convert", checkpoint(MINI), "--target-size", "3.5MB", "-o", mine, "--plan-out", tmp_path / "p.toml")
    assert (
        r.exit_code == 1
        and r.stderr == f"error: {mine}: already exists — pass --force to overwrite it, or choose another --outfile\n"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["mine.gguf"] and mine.read_text() == "mine"


# --- inspect and card on planned files -------------------------------------------------------------------

INSPECTED = [  # (reason, target options, with the imatrix, the Plan section's lines that depend on the target)
    (
        "a size target without an imatrix",
        ["--target-size", "3.5MB"],
        False,
        ["budget           3.5MB (the whole file at most 3,500,000 bytes)", "imatrix          none"],
    ),
    (
        "a bits/weight target with an imatrix and a cap on bytes per token",
        ["--target-bpw", "4.5", "--max-bytes-per-token", "1500000"],
        True,
        ["bytes per token  at most 1,500,000 weight bytes read per token", "imatrix          ref.imatrix.gguf sha256:"],
    ),
]


@pytest.mark.parametrize("reason,target,imatrix,lines", INSPECTED, ids=[i[0] for i in INSPECTED])
def test_inspect_shows_the_plan_and_the_types_per_group(reason, target, imatrix, lines, planned):
    path, _ = planned(*target, imatrix=imatrix)
    keys = plan_keys(path)
    r = run("inspect", path)
    assert r.exit_code == 0, r.output
    text = r.stdout.splitlines()
    # one line per key, but target and budget_bytes share one, and sample_rows joins estimated_error
    section = text[text.index("Plan") + 1 : text.index("Plan") + 1 + len(keys) - 2]
    budget_kind = "tensor data" if keys["target"].endswith("BPW") else "the whole file"
    assert section[0] == f"budget           {keys['target']} ({budget_kind} at most {keys['budget_bytes']:,} bytes)"
    assert f"objective        {keys['objective']}" in section
    assert (
        f"estimated error  {keys['estimated_error']:.6g} (on {keys['sample_rows']} sampled rows per tensor)" in section
    )
    assert (
        f"candidate types  {', '.join(keys['types'])}" in section
        and f"planned by       marco-gguf {keys['version']}" in section
    )
    for line in lines:
        assert any(s.startswith(line) for s in section), (line, section)
    info = read_info(path)
    d = json.loads(run("inspect", path, "--json").stdout)
    assert d["plan"] == keys
    for group, totals in d["groups"].items():
        assert totals["types"] == dict(Counter(t.type for t in info.tensors if t.group == group).most_common())
        row = next(s for s in text if s.startswith(f"│ {group} "))  # the types cell may wrap after the first
        q, n = next(iter(totals["types"].items()))
        assert f"│ {q} x{n}" in row, (q, n, row)


def test_inspect_of_a_preset_file_has_no_plan(converted):
    path = converted(MINI, "q8_0").path
    r = run("inspect", path)
    assert r.exit_code == 0 and "Plan" not in r.stdout.splitlines()
    d = json.loads(run("inspect", path, "--json").stdout)
    assert d["plan"] == {} and d["groups"]["experts"]["types"] == {"Q8_0": 2 * 3}


def test_card_lists_planned_files_as_planned_for_a_budget(planned, converted, tmp_path):
    folder = tmp_path / "Marco-Test-Instruct-GGUF"
    folder.mkdir()
    size, _ = planned("--target-size", "3.5MB")
    bpw, _ = planned("--target-bpw", "4.5", "--max-bytes-per-token", "1500000", imatrix=True)
    for p in (size, bpw, converted(MINI, "q8_0").path):
        shutil.copy(p, folder / p.name)
    r = run("card", folder, "--json")
    assert r.exit_code == 0, r.output
    rows = {row["filename"]: row for row in json.loads(r.stdout)["files"]}
    q8 = rows["Marco-Test-Instruct-Q8_0.gguf"]
    assert (q8["quant_type"], q8["plan"]) == ("Q8_0", None)
    by_size = rows[size.name]
    assert by_size["quant_type"] == "Plan 3.5MB" and by_size["plan"] == plan_keys(size)
    assert by_size["description"].startswith(
        "Planned for a budget of 3.5MB (the whole file at most 3,500,000 bytes); types chosen for the least total "
        "squared error (no imatrix; routed experts by their uniform share), estimated "
    )
    by_bpw = rows[bpw.name]
    keys = plan_keys(bpw)
    assert by_bpw["quant_type"] == "i1-Plan 4.5BPW"
    assert by_bpw["description"].startswith(
        f"Planned for a budget of 4.5BPW (tensor data at most {keys['budget_bytes']:,} bytes), at most 1,500,000 "
        f"weight bytes read per token; types chosen for the {keys['objective']}, estimated "
        f"{keys['estimated_error']:.6g}. Importance-matrix quant (imatrix from "
    )
    readme = (folder / "README.md").read_text()
    assert re.search(rf"\| \[{re.escape(size.name)}\]\(\./{re.escape(size.name)}\) \| Plan 3\.5MB \| ", readme)
    assert "| i1-Plan 4.5BPW |" in readme and "| Q8_0 |" in readme


ODD_KEYS = [  # (reason, key, GGUF type, value, the Plan line inspect prints): inspect shows any file, edited or not
    (
        "a budget stored as a string: formatting it with ',' raised ValueError",
        "budget_bytes",
        V.STRING,
        "3.5 million",
        "budget           3.5MB (the whole file at most 3.5 million bytes)",
    ),
    (
        "an estimated error stored as a string: '.6g' raised ValueError",
        "estimated_error",
        V.STRING,
        "small",
        "estimated error  small (on ",
    ),
    ("the candidate types as one number", "types", V.UINT32, 7, "candidate types  7"),
    ("a key this version does not know is shown as it is", "note", V.STRING, "by hand", "note             by hand"),
]


@pytest.mark.parametrize("reason,key,vtype,value,line", ODD_KEYS, ids=[k[0].split(":")[0] for k in ODD_KEYS])
def test_inspect_and_card_show_odd_plan_keys_as_they_are(reason, key, vtype, value, line, planned, tmp_path):
    doc = Doc.of(planned("--target-size", "3.5MB")[0])
    kv = next((kv for kv in doc.kvs if kv[0] == f"quantize.plan.{key}"), None)
    if kv is None:
        doc.kvs.append(kv := [f"quantize.plan.{key}", vtype, None, value])
    kv[1:] = [vtype, None, value]
    edited = tmp_path / "edited" / "Marco-Test-Instruct-P3.5MB.gguf"
    edited.parent.mkdir()
    edited.write_bytes(encode(doc))
    r = run("inspect", edited)
    assert r.exit_code == 0, r.output
    assert any(s.startswith(line) for s in r.stdout.splitlines()), r.stdout
    r = run("card", edited.parent, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["files"][0]["quant_type"] == "Plan 3.5MB"
