"""The manifest's checksums: CRC64NVME as S3 writes it (version 3), sha256 in version 2 manifests still read."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from loka_api.manifest import CheckpointManifest, ManifestFile
from loka_api.storage import checksum_header, combine_crc64nvme, crc64nvme, default_concurrency, file_crc64nvme


def test_parts_combine_into_the_whole_files_crc_as_s3_computes_it(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    parts = [data[i : i + 1024 * 1024] for i in range(0, len(data), 1024 * 1024)]
    combined = 0
    for index, part in enumerate(parts):
        combined = combine_crc64nvme(combined, crc64nvme(part), len(part)) if index else crc64nvme(part)
    assert combined == crc64nvme(data)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert file_crc64nvme(path) == checksum_header(combined)
    assert len(base64.b64decode(checksum_header(combined))) == 8  # x-amz-checksum-crc64nvme: 8 bytes, base64
    # the check value of CRC-64/NVME (the catalogue's, for "123456789")
    assert crc64nvme(b"123456789") == 0xAE8B14860A799888


def test_a_manifest_records_crc64nvme_and_still_reads_a_version_2_sha256() -> None:
    written = CheckpointManifest(step=3, files=(ManifestFile("a.pt", 4, crc64nvme="AAAAAAAAAAA="),), created="now")
    body = json.loads(written.to_json())
    assert body["version"] == 3 and body["files"] == [{"path": "a.pt", "size": 4, "crc64nvme": "AAAAAAAAAAA="}]
    old = {"version": 2, "step": 1, "created": "then", "files": [{"path": "b.pt", "size": 2, "sha256": "ab" * 32}]}
    (entry,) = CheckpointManifest.from_json(json.dumps(old).encode()).files
    assert (entry.sha256, entry.crc64nvme) == ("ab" * 32, None)
    with pytest.raises(ValueError, match="without a checksum"):
        CheckpointManifest.from_json(json.dumps({**old, "files": [{"path": "c", "size": 1}]}).encode())


def test_concurrency_follows_the_cores_within_bounds() -> None:
    assert [default_concurrency(cores) for cores in (1, 2, 4, 8, 16, 64)] == [32, 32, 32, 64, 64, 64]
