"""No program prints a store URL's credentials: each of the four is run down its error
paths (and a dry run) with `KEY:SECRET@` in every URL it takes, and all it writes is
searched for the key and the secret. The URL is refused (credentials belong in the
AWS_* variables), and the refusal names it without them."""

import os
import subprocess

import pytest

from programs import BINS
KEY = "AKIAEXAMPLEKEYDONOTPRINT"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYsecretDONOTPRINT"
URL = f"s3://{KEY}:{SECRET}@bucket/prefix"

STAGE = 'name = "stage1"\npreset = "small"\nepochs = 1\n[schedule]\nkind = "constant"\n'
CATALOG = '[[datasets]]\nname = "AMOS22"\nmodality = "CT"\npretrain = true\nfinetune = true\n'


def cases(tmp):
    stages = tmp / "stages"
    stages.mkdir(exist_ok=True)
    (stages / "stage1.toml").write_text(STAGE)
    catalog = tmp / "datasets.toml"
    catalog.write_text(CATALOG)
    s, stage = str(stages), str(stages / "stage1.toml")
    return [
        ["s3-shards", "ls", URL],
        ["s3-shards", "verify", URL],
        ["s3-ingest", "--manifest", str(catalog), "--out", URL],
        ["s3-orch", "status", "--runs", URL, "--run", "r"],
        ["s3-orch", "logs", "--runs", URL, "--run", "r", "--stage", "stage1"],
        ["s3-orch", "launch", "stage1", "--runs", URL, "--run", "r", "--data", URL, "--stages", s],
        ["s3-orch", "launch", "stage1", "--runs", URL, "--run", "r", "--data", URL, "--stages", s, "--dry-run"],
        ["s3-orch", "launch", "stage1", "--backend", "k8s", "--image", "i", "--runs", URL, "--run", "r",
         "--data", URL, "--stages", s, "--dry-run"],
        ["s3-orch", "launch", "stage1", "--backend", "slurm", "--runs", URL, "--run", "r", "--data", URL,
         "--stages", s, "--dry-run"],
        ["s3-train", "train", "--stage", stage, "--data", URL, "--run", URL],
        ["s3-train", "eval", "--data", URL, "--run", URL],
        ["s3-train", "predict", "--weights", URL, "--image", URL, "--out", str(tmp / "p.nii.gz")],
    ]


@pytest.mark.parametrize("index", range(12))
def test_no_program_prints_a_urls_credentials(tmp_path, index):
    argv = cases(tmp_path)[index]
    # No reachable store and no credentials: nothing may be contacted for real.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT="http://127.0.0.1:9", AWS_ALLOW_HTTP="true", AWS_ACCESS_KEY_ID="x",
               AWS_SECRET_ACCESS_KEY="y", S3_STORE_RETRIES="0", RUST_LOG="debug")
    r = subprocess.run([BINS[argv[0]]] + argv[1:], cwd=tmp_path, env=env, capture_output=True, encoding="utf-8", errors="replace",
                       timeout=120)
    said = r.stdout + r.stderr
    for secret in (KEY, SECRET, SECRET.replace("/", "%2F")):
        assert secret not in said, f"{' '.join(argv[:2])} printed a credential:\n{said}"
    if "--dry-run" not in argv:
        assert r.returncode != 0, f"{argv}: accepted a URL with credentials:\n{said}"
