import pytest

from fastdl.bench import all_cases


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        op = getattr(metafunc.module, "OP", None)
        only = getattr(metafunc.module, "ONLY", None)
        cases = all_cases(op=op, only=only)
        metafunc.parametrize("case", cases, ids=[c.name for c in cases])


@pytest.fixture(scope="module")
def inputs_cache():
    return {}
