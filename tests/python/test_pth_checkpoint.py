"""`s3-train convert` reads a torch.save checkpoint (zip format, weights under
`model_state_dict`, as the official SAM-Med3D checkpoints) and writes the same
tensors as safetensors under the reference names.

torch cannot be installed here, so the checkpoint is written the way torch.save
writes it: a zip with `archive/data.pkl` (a protocol-2 pickle whose tensors are
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` calls and whose
storages are persistent ids `('storage', torch.FloatStorage, key, 'cpu', numel)`) and
one raw little-endian file per storage under `archive/data/`."""

import collections
import json
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import types
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("S3_TRAIN_BIN", str(ROOT / "target" / "debug" / "s3-train"))
FIXTURE = ROOT.parent / "shared" / "fixtures" / "model" / "sam3d_tiny.weights.safetensors"


def read_safetensors(path):
    raw = pathlib.Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    body = raw[8 + n:]
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = (v["dtype"], v["shape"], body[a:b])
    return out


def fake_torch():
    if "torch" in sys.modules and hasattr(sys.modules["torch"], "FloatStorage"):
        return sys.modules["torch"], sys.modules["torch._utils"]
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2

    class FloatStorage:
        pass

    FloatStorage.__module__ = "torch"
    FloatStorage.__qualname__ = "FloatStorage"
    torch.FloatStorage = FloatStorage
    torch._utils = utils
    sys.modules["torch"] = torch
    sys.modules["torch._utils"] = utils
    return torch, utils


class Storage:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class Tensor:
    def __init__(self, storage, shape, rebuild):
        self.storage, self.shape, self.rebuild = storage, shape, rebuild

    def __reduce__(self):
        stride, acc = [], 1
        for d in reversed(self.shape):
            stride.insert(0, acc)
            acc *= d
        return (self.rebuild, (self.storage, 0, tuple(self.shape), tuple(stride), False, collections.OrderedDict()))


def write_pth(path, tensors):
    torch, utils = fake_torch()

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
            return None

    state = collections.OrderedDict()
    blobs = {}
    for i, (name, (dtype, shape, data)) in enumerate(tensors.items()):
        assert dtype == "F32"
        key = str(i)
        blobs[key] = data
        state[name] = Tensor(Storage(key, len(data) // 4), shape, utils._rebuild_tensor_v2)
    import io
    buf = io.BytesIO()
    P(buf, protocol=2).dump({"model_state_dict": state, "epoch": 7})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for key, data in blobs.items():
            z.writestr(f"archive/data/{key}", data)


def test_convert_official_style_checkpoint(tmp_path):
    weights = read_safetensors(FIXTURE)
    pth = tmp_path / "sam_med3d_tiny.pth"
    write_pth(pth, weights)
    out = tmp_path / "converted.safetensors"
    r = subprocess.run([BIN, "convert", str(pth), str(out), "--preset", "tiny"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "missing []" in r.stdout and "unused []" in r.stdout, r.stdout
    converted = read_safetensors(out)
    assert converted.keys() == weights.keys()
    for k in weights:
        assert converted[k][1] == weights[k][1], k
        assert converted[k][2] == weights[k][2], f"{k}: bytes differ"

    # A checkpoint missing a tensor is refused, naming it.
    del weights["mask_decoder.iou_token.weight"]
    write_pth(pth, weights)
    r = subprocess.run([BIN, "convert", str(pth), str(out), "--preset", "tiny"], capture_output=True, text=True)
    assert r.returncode == 2 and "mask_decoder.iou_token.weight" in r.stderr, r.stderr
