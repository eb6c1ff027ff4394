"""The bulk benchmark's workload: the same number of instances with half of them repeats."""

from __future__ import annotations

import json

from scripts.bulk_bench import with_duplicates


def test_with_duplicates_keeps_the_count_and_repeats_the_first_half():
    body = json.dumps({"instances": [[i, -i] for i in range(10)]}).encode()
    instances = json.loads(with_duplicates(body))["instances"]
    assert len(instances) == 10 and instances[5:] == instances[:5] == [[i, -i] for i in range(5)]
