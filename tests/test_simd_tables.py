"""Each kernel table of a SIMD level lists only functions of that level or a lower one.

A table entry of a higher level runs fine (and bitwise equal) on a machine that has it,
so no run-time test here can see the mistake; on a CPU without AVX-512 it would be an
illegal instruction.  This reads the tables in the C sources."""
import pathlib
import re

SRC = pathlib.Path(__file__).resolve().parents[1] / "fastdl" / "_backends" / "cython" / "src"
TIERS = ("scalar", "avx2", "avx512")
TABLE = re.compile(r"(?:static\s+)?const\s+\w+\s+(\w+)\s*=\s*\{(.*?)\};", re.S)


def _tier(name):
    low = name.lower()
    return max((i for i, t in enumerate(TIERS) if re.search(rf"(^|_){t}($|_)", low)), default=None)


def tables():
    for path in sorted(SRC.glob("*.c")):
        for m in TABLE.finditer(path.read_text()):
            if _tier(m.group(1)) is not None:
                yield path.name, m.group(1), m.group(2)


def test_tables_are_found():
    names = {(f, t) for f, t, _ in tables()}
    for f, t in [("normk.c", "f64_avx2"), ("moments.c", "f32_avx2"), ("quantk_table.c", "K_AVX2"),
                 ("decodek_avx2.c", "fdl_dk_f32_avx2"), ("normk.c", "f32_avx512")]:
        assert (f, t) in names, (f, t, sorted(names))


def test_no_table_names_a_function_of_a_higher_level():
    bad = []
    for f, table, body in tables():
        level = _tier(table)
        for sym in re.findall(r"\b\w+\b", body):
            t = _tier(sym)
            if t is not None and t > level:
                bad.append(f"{f}: table {table} ({TIERS[level]}) lists {sym}")
    assert not bad, "\n".join(bad)
