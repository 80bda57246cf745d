"""The four programs under test: the binaries tests/run names in S3_*_BIN, else the
debug builds."""

import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEBUG = ROOT / "target" / "debug"
BINS = {
    name: os.environ.get(var, str(DEBUG / name))
    for name, var in [("s3-shards", "S3_SHARDS_BIN"), ("s3-ingest", "S3_INGEST_BIN"),
                      ("s3-orch", "S3_ORCH_BIN"), ("s3-train", "S3_TRAIN_BIN")]
}
