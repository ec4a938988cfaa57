"""The training numerics are bit for bit what they were when `fingerprint.json` was recorded.

Short trainings over every strategy, granularity, backward path and optimizer (`fingerprint.py`)
hash their parameters and gradients; each mode (the fast path with the C kernels and with the
PyTorch ops, recorded from the code before asymviz/fast existed; the plain path, recorded when it
was added) runs in a fresh process. The hashes hold on the kind of machine they were recorded on (same torch build and CPU
vector unit); elsewhere the test skips and says how to record them there.
"""

import json

import pytest

import fingerprint


@pytest.mark.parametrize("mode", list(fingerprint.MODES))
def test_numerics_are_unchanged_bit_for_bit(mode, request):
    record = json.loads(fingerprint.RECORD.read_text())
    if mode == "c-kernels":
        request.getfixturevalue("kernel_lib")  # skips (or fails under CI) without a compiler
    now = fingerprint.run(mode)
    if now["machine"] != record["machine"]:
        pytest.skip(f"fingerprints were recorded on {record['machine']}, this is {now['machine']}: "
                    "record them here with `PYTHONPATH=. python tests/fingerprint.py --write` at a known-good commit")
    changed = sorted(case for case in record[mode] if now["hashes"].get(case) != record[mode][case])
    assert set(now["hashes"]) == set(record[mode]), "the cases changed: record them again"
    assert not changed, f"{len(changed)} of {len(record[mode])} cases changed bits: {changed[:12]}"
