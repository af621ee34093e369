#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into tests/fuzz/corpus/.

    tests/fuzz/make_seeds.py BUILD_DIR/tools/ha-make-weights

The mapping-weights seeds come from ha-make-weights (small shapes, every dtype, paper and group
mode, a dense layer); the config seeds include the shipped model's config.json. Everything is tiny
on purpose: seeds only show the fuzzer the shape of valid input."""
import json
import os
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
SPLIT = b"\n#~#\n"  # fuzz_tokenizer_files.c: FUZZ_SPLIT


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, meta):
    """tensors: list of (name, dtype, shape, raw bytes)."""
    header, data = {}, b""
    if meta is not None:
        header["__metadata__"] = meta
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def byte_symbols():
    """GPT-2's bytes_to_unicode (byte -> symbol)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, n = {}, 256
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(n)
            n += 1
    return out


WEIGHTS = {  # seed file: ha-make-weights arguments
    "paper_f32_depth2.safetensors": "--layers 2 --q-heads 2 --head-dim 4 --bits 8 --depth 2 --hidden 3 "
                                    "--dense-layers 0 --dtype f32",
    "group_bf16_depth3.safetensors": "--layers 1 --q-heads 2 --k-heads 1 --head-dim 4 --bits 33 --depth 3 "
                                     "--hidden 2 --dtype bf16",
    "simhash_f16.safetensors": "--kind simhash --layers 1 --q-heads 1 --head-dim 6 --bits 5 --dtype f16",
}


def main():
    make_weights = sys.argv[1] if len(sys.argv) > 1 else None
    if not make_weights:
        sys.exit("usage: make_seeds.py BUILD_DIR/tools/ha-make-weights")
    d = os.path.join(HERE, "corpus", "fuzz_weights")
    os.makedirs(d, exist_ok=True)
    for name, args in WEIGHTS.items():
        subprocess.run([make_weights, "--out", os.path.join(d, name)] + args.split(), check=True)

    # generic safetensors: every dtype, a scalar, an empty tensor, metadata that is not hashattn's
    write("fuzz_weights", "generic_dtypes.safetensors", safetensors([
        ("a.f64", "F64", [2], struct.pack("<2d", 1.5, -2.0)),
        ("b.i32", "I32", [1, 2], struct.pack("<2i", 7, -7)),
        ("c.u8", "U8", [3], b"\x01\x02\x03"),
        ("d.bool", "BOOL", [1], b"\x01"),
        ("e.scalar", "F32", [], struct.pack("<f", 3.0)),
        ("f.empty", "BF16", [0, 4], b""),
        ("g.i64", "I64", [1], struct.pack("<q", -1)),
        ("h.i16", "I16", [1], struct.pack("<h", 5)),
        ("i.i8", "I8", [1], b"\xff"),
    ], {"note": "generic", "format": "pt"}))

    # config.json
    with open(os.path.join(ROOT, "models", "tinylm-25m", "config.json"), "rb") as f:
        write("fuzz_config", "tinylm-25m.json", f.read())
    write("fuzz_config", "minimal.json", json.dumps({
        "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 128, "vocab_size": 300, "max_position_embeddings": 256}))
    write("fuzz_config", "gqa_rope_parameters.json", json.dumps({
        "model_type": "llama", "hidden_act": "silu", "hidden_size": 96, "num_hidden_layers": 1,
        "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 200,
        "vocab_size": 1000, "max_position_embeddings": 1024, "rms_norm_eps": 1e-6, "bos_token_id": 1,
        "eos_token_id": None, "rope_theta": None, "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
        "rope_scaling": None, "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False}))

    # tokenizer files: every byte, a few merges, an added special token
    sym = byte_symbols()
    vocab = {"<|endoftext|>": 0}
    for b in range(256):
        vocab[sym[b]] = len(vocab)
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("in", "g"), ("Ã", "©")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    merges_txt = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    config = json.dumps({"bos_token": "<|endoftext|>", "eos_token": {"content": "<|endoftext|>"},
                         "model_max_length": 1e30, "unk_token": None})
    v = json.dumps(vocab, ensure_ascii=False, separators=(",", ":")).encode()
    write("fuzz_tokenizer_files", "with_config", v + SPLIT + merges_txt.encode() + SPLIT + config.encode())
    write("fuzz_tokenizer_files", "no_config", v + SPLIT + merges_txt.replace("\n", "\r\n").encode())

    # text for the shipped tokenizer
    write("fuzz_tokenizer_text", "english.txt", "On glancing over my notes of the seventy odd cases, I've "
          "found 1234 things;  it's\tfine.\n\n<|endoftext|>The end")
    write("fuzz_tokenizer_text", "unicode.txt", "naïve café — Ωμέγα 日本語 🙂 \u0085 \u00a0x\u2003y")
    write("fuzz_tokenizer_text", "invalid_utf8.bin", b"ab\xff\xfe cd\xc3 \xe2\x82 \xf0\x9f\x99 \x80<|endoftext")
    write("fuzz_tokenizer_text", "ids.bin", struct.pack("<6i", 0, 1, 8191, 300, 8192, -1))

    # plugin tables: abi_version, struct_size, mask of members set (bit 31: table present), name
    full = (1 << 17) - 1 | 1 << 31
    for name, abi, size, mask, pname in [
        ("valid_full", 1, 160, full, b"cpu_avx512"),
        ("valid_no_plan", 1, 152, full & ~(1 << 11 | 1 << 12 | 1 << 16), b"my-backend_2"),
        ("abi_2", 2, 160, full, b"future"),
        ("short_table", 1, 100, full, b"old"),
        ("missing_encode", 1, 160, full & ~(1 << 13), b"x"),
        ("null_table", 1, 160, 0, b""),
        ("bad_name", 1, 160, full, b"a b/../\x01"),
    ]:
        write("fuzz_plugin_table", name, struct.pack("<III", abi, size, mask) + pname)


if __name__ == "__main__":
    main()
