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


@pytest.fixture
def run_bench(benchmark, inputs_cache):
    """run_bench(case, backend): time the case's public call under pytest-benchmark."""
    def run(case, backend):
        if case.name not in inputs_cache:
            inputs_cache[case.name] = case.setup()
        inp = inputs_cache[case.name]
        benchmark.extra_info.update(bytes=case.bytes_read + case.bytes_written, **case.params)
        benchmark(case.call, inp, backend)
    return run
