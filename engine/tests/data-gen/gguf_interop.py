#!/usr/bin/env python3
"""Interoperability between ternforge's GGUF code and the PyPI `gguf` package.

Not needed by `cargo test` (which only reads the committed fixtures). Run by hand
after changing the reader/writer, with `pip install gguf numpy`:

  python3 engine/tests/data-gen/gguf_interop.py make
      writes engine/tests/data/gguf_py_fixture.bin with gguf.GGUFWriter (TQ1_0, TQ2_0,
      F16, F32 tensors, metadata of many types) and gguf_py_fixture.expected.bin (the
      raw tensor bytes gguf produced, concatenated in file order); the Rust test
      gguf_interop.rs reads both.
  python3 engine/tests/data-gen/gguf_interop.py check
      reads engine/tests/data/ternforge_writer_fixture.bin (written by our writer; see
      gguf_interop.rs) with gguf.GGUFReader and checks every field.
"""
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

DATA = Path(__file__).resolve().parent.parent / "data"


def ternary(rows, cols, seed, scale):
    rng = np.random.default_rng(seed)
    return (rng.integers(-1, 2, size=(rows, cols)).astype(np.float32) * scale)


def make():
    out = DATA / "gguf_py_fixture.bin"
    w = gguf.GGUFWriter(str(out), "bitnet")
    w.add_uint32("bitnet.block_count", 2)
    w.add_uint64("test.u64", 1 << 40)
    w.add_int32("test.i32", -7)
    w.add_float32("bitnet.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_float64("test.f64", 0.125)
    w.add_bool("test.bool", True)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", ["<s>", "Ġhello", "日本"])
    w.add_array("tokenizer.ggml.token_type", [1, 1, 3])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.5, 2.25])
    tensors = []
    tq1 = gguf.quants.quantize(ternary(2, 256, 1, 0.5), Q.TQ1_0)
    tq2 = gguf.quants.quantize(ternary(3, 512, 2, 0.25), Q.TQ2_0)
    f16 = (np.arange(2 * 256, dtype=np.float32) / 64).astype(np.float16).reshape(2, 256)
    f32 = np.arange(100, dtype=np.float32).reshape(4, 25) - 50
    w.add_tensor("blk.0.ffn_down.weight", tq1, raw_dtype=Q.TQ1_0)
    w.add_tensor("blk.0.ffn_up.weight", tq2, raw_dtype=Q.TQ2_0)
    w.add_tensor("token_embd.weight", f16)
    w.add_tensor("output_norm.weight", f32)
    tensors = [tq1, tq2, f16, f32]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    expected = b"".join(np.ascontiguousarray(t).tobytes() for t in tensors)
    (DATA / "gguf_py_fixture.expected.bin").write_bytes(expected)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


def check():
    path = DATA / "ternforge_writer_fixture.bin"
    r = gguf.GGUFReader(str(path))

    def field(key):
        f = r.fields[key]
        return f.contents()

    assert field("general.architecture") == "bitnet-b1.58", field("general.architecture")
    assert field("bitnet-b1.58.block_count") == 30
    assert field("general.alignment") == 64
    assert abs(field("bitnet-b1.58.rope.freq_base") - 500000.0) < 1e-3
    assert field("test.bool") is True
    assert field("test.i8") == -3
    assert field("test.u16") == 65000
    assert field("test.i64") == -(1 << 40)
    assert field("test.f64") == 0.1
    assert field("tokenizer.ggml.tokens") == ["a", "Ġb", "日本"]
    assert field("tokenizer.ggml.token_type") == [1, 2, 3]
    assert field("tokenizer.ggml.scores") == [0.5, -0.25]
    # contents() flattens nested arrays; check the parsed structure instead:
    # outer array of 2 arrays, [i32 x2: 1, 2] and [i32 x1: 3].
    nested = r.fields["test.nested"]
    V = gguf.GGUFValueType
    assert nested.types == [V.ARRAY, V.ARRAY, V.INT32], nested.types
    parts = [p.tolist() for p in nested.parts[2:]]
    assert parts == [[9], [9], [2], [5], [2], [1], [2], [5], [1], [3]], parts

    t = {x.name: x for x in r.tensors}
    assert set(t) == {"token_embd.weight", "output_norm.weight", "blk.0.ffn_down.weight",
                      "blk.0.ffn_up.weight"}, set(t)
    assert t["output_norm.weight"].tensor_type == Q.F32
    assert list(t["output_norm.weight"].shape) == [40]
    assert np.array_equal(t["output_norm.weight"].data, np.arange(40, dtype=np.float32) / 8)
    assert t["token_embd.weight"].tensor_type == Q.F16
    assert list(t["token_embd.weight"].shape) == [256, 2]
    assert np.array_equal(t["token_embd.weight"].data.reshape(-1),
                          (np.arange(512) % 7).astype(np.float16))
    tq2 = t["blk.0.ffn_up.weight"]
    assert tq2.tensor_type == Q.TQ2_0 and list(tq2.shape) == [256, 2]
    deq = gguf.quants.dequantize(tq2.data, Q.TQ2_0)
    want = np.array([((i * 7) % 3) - 1 for i in range(512)], dtype=np.float32).reshape(2, 256)
    assert np.allclose(deq, want * 0.5), (deq[0, :8], want[0, :8])
    tq1 = t["blk.0.ffn_down.weight"]
    assert tq1.tensor_type == Q.TQ1_0 and list(tq1.shape) == [256, 2]
    assert tq1.data_offset % 64 == 0
    assert np.array_equal(gguf.quants.dequantize(tq1.data, Q.TQ1_0), ternary(2, 256, 1, 0.5))
    print(f"gguf.GGUFReader read {path.name}: OK")


if __name__ == "__main__":
    {"make": make, "check": check}[sys.argv[1]]()
