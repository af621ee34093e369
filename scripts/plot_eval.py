#!/usr/bin/env python3
"""Plots ha-eval's JSON (SPEC §5): recall of attention mass vs budget and relative output error vs
budget, one line per method (mean over the measured layers, heads and query rows), plus recall per
layer at each budget.

    scripts/plot_eval.py RESULT.json [MORE.json ...] --out DIR

With --markdown FILE it also writes the tables of docs/quality.md (means, per layer, perplexity).
Several files may be given (e.g. one run per weights file): the baselines are taken from the first,
every file's learned methods are added. Writes DIR/recall_vs_budget.png, DIR/error_vs_budget.png and
DIR/recall_per_layer.png. Needs matplotlib (pip install matplotlib).
"""
import argparse
import json
import os
import sys

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("plot_eval.py: matplotlib is missing (pip install matplotlib)")

STYLE = {  # method name prefix -> (label, line style)
    "oracle": ("oracle top-k (ceiling)", "k--"),
    "simhash32_mips": ("SimHash-32, MIPS transform", "C1-o"),
    "quest_p16": ("Quest, pages of 16 (256 bits/token)", "C2-s"),
    "quest_p128": ("Quest, pages of 128 (32 bits/token)", "C2:s"),
    "sink_local": ("sink + local only (floor)", "C7:"),
}


def load_methods(paths):
    """[(name, description, {budget: entry})], budgets (name, fraction) of the first file, layers."""
    methods, seen = [], set()
    budgets = layers = None
    for i, path in enumerate(paths):
        with open(path) as f:
            doc = json.load(f)
        if budgets is None:
            budgets = [(b["name"], b["fraction"]) for b in doc["budgets"]]
            layers = doc["layers"]
        for desc in doc["methods"]:
            name = desc["name"]
            if name in seen or (desc["kind"] == "baseline" and i > 0):
                continue
            seen.add(name)
            methods.append((name, desc, doc["results"][name]))
    return methods, budgets, layers


def label_and_style(name, desc, learned_index):
    if name in STYLE:
        return STYLE[name]
    label = "runtime codes: %s (%s mode, %d bits)" % (os.path.basename(desc.get("weights", name)),
                                                      desc.get("mode", "?"), desc.get("bits_per_token", 0))
    return label, "C%d-^" % (3 + learned_index % 6)


def plot_vs_budget(methods, budgets, key, ylabel, path):
    fig, ax = plt.subplots(figsize=(10, 4.5))
    xs = [f for _, f in budgets]
    learned = 0
    for name, desc, res in methods:
        label, style = label_and_style(name, desc, learned)
        learned += desc["kind"] == "learned"
        ys = [res[b][key] for b, _ in budgets]
        if all(y is None for y in ys):
            continue
        ax.plot(xs, ys, style, label=label, linewidth=1.6, markersize=5)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([b for b, _ in budgets])
    ax.set_xlabel("heavy budget (fraction of the length; + 128 sink + 128 local)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    save_png(fig, path)


def save_png(fig, path):
    """Saves the figure as a 64-colour palette PNG: a quarter of the RGBA size with no visible loss for
    line plots (the repository must stay small enough to travel to the GPU machine)."""
    import io

    from PIL import Image  # matplotlib's own dependency

    buf = io.BytesIO()
    fig.savefig(buf, dpi=120, format="png")
    plt.close(fig)
    buf.seek(0)
    Image.open(buf).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def plot_per_layer(methods, budgets, layers, path):
    fig, axes = plt.subplots(1, len(budgets), figsize=(4 * len(budgets) + 3.5, 4), sharey=True, squeeze=False)
    for ax, (b, _) in zip(axes[0], budgets):
        learned = 0
        for name, desc, res in methods:
            label, style = label_and_style(name, desc, learned)
            learned += desc["kind"] == "learned"
            ys = [res[b]["layers"][str(l)]["recall"] for l in layers]
            if all(y is None for y in ys):
                continue
            ax.plot(layers, ys, style, label=label, linewidth=1.4, markersize=4)
        ax.set_title("budget %s" % b)
        ax.set_xlabel("layer")
        ax.set_xticks(layers)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("recall of attention mass")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    save_png(fig, path)


def fmt(v, digits=3):
    return "—" if v is None else "%.*f" % (digits, v)


def markdown(methods, budgets, layers, docs):
    names = [b for b, _ in budgets]
    lines = ["| method (auxiliary bits per token) | " + " | ".join("recall %s" % b for b in names) + " | " +
             " | ".join("error %s" % b for b in names) + " |",
             "|---" * (1 + 2 * len(names)) + "|"]
    learned = 0
    for name, desc, res in methods:
        label, _ = label_and_style(name, desc, learned)
        learned += desc["kind"] == "learned"
        bits = "" if "bits" in label else " (%d)" % desc.get("bits_per_token", 0)
        lines.append("| %s%s | " % (label, bits) +
                     " | ".join(fmt(res[b]["recall"]) for b in names) + " | " +
                     " | ".join(fmt(res[b]["error"]) for b in names) + " |")
    for b in names:
        lines += ["", "Recall per layer at %s:" % b, "",
                  "| method | " + " | ".join("layer %d" % l for l in layers) + " |",
                  "|---" * (1 + len(layers)) + "|"]
        learned = 0
        for name, desc, res in methods:
            label, _ = label_and_style(name, desc, learned)
            learned += desc["kind"] == "learned"
            lines.append("| %s | " % label + " | ".join(fmt(res[b]["layers"][str(l)]["recall"]) for l in layers) +
                         " |")
    for doc in docs:
        ppl = doc.get("perplexity")
        if not ppl:
            continue
        lines += ["", "Perplexity of targets [%d, %d), decode attention through the runtime:" % tuple(ppl["targets"]),
                  "", "| decode attention | budget | NLL (nats) | perplexity | next-token agreement | tokens/s |",
                  "|---|---|---|---|---|---|",
                  "| dense | — | %.4f | %.2f | — | %.0f |" % (ppl["dense"]["nll"], ppl["dense"]["ppl"],
                                                          ppl["dense"]["tokens_per_s"])]
        for r in ppl["sparse"]:
            lines.append("| %s | %s | %.4f | %.2f | %.1f %% | %.0f |" % (
                os.path.basename(r["weights"]), r["budget"], r["nll"], r["ppl"], 100 * r["agreement"],
                r["tokens_per_s"]))
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", help="ha-eval --json output(s)")
    ap.add_argument("--out", default=".", help="directory of the PNGs (default: .)")
    ap.add_argument("--markdown", help="also write the result tables (Markdown) to this file")
    args = ap.parse_args()
    methods, budgets, layers = load_methods(args.json)
    os.makedirs(args.out, exist_ok=True)
    outputs = [os.path.join(args.out, n) for n in ("recall_vs_budget.png", "error_vs_budget.png",
                                                   "recall_per_layer.png")]
    plot_vs_budget(methods, budgets, "recall", "recall of attention mass (mean)", outputs[0])
    plot_vs_budget(methods, budgets, "error", "relative output error ‖o_sparse − o‖ / ‖o‖ (mean)", outputs[1])
    plot_per_layer(methods, budgets, layers, outputs[2])
    if args.markdown:
        docs = []
        for path in args.json:
            with open(path) as f:
                docs.append(json.load(f))
        with open(args.markdown, "w") as f:
            f.write(markdown(methods, budgets, layers, docs))
        outputs.append(args.markdown)
    for p in outputs:
        print("wrote", p)


if __name__ == "__main__":
    main()
