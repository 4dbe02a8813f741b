"""The self-contained HTML report: images embedded, style and script inline, no network request.

Every string that comes from the corpus, a prompt or a model goes through ``html.escape`` (in
HTML) or is embedded as JSON with ``<``, ``>`` and ``&`` escaped and inserted with ``textContent``
(in the explorer), so text such as ``<script>`` shows as text and never runs.
"""

from __future__ import annotations

import base64
import json
import os
from html import escape
from pathlib import Path
from typing import Any

import torch

FIGURES = (
    ("training_progress_scratch.png", "From-scratch training: loss by step and by tokens, learning rate"),
    ("finetuning_progress_hf.png", "Fine-tuning: loss by step and by tokens, learning rate"),
    ("model_comparison.png", "Side by side: size, bits per character, loss reduction, training time"),
    ("attention_weights_scratch.png", "Attention of the from-scratch GPT"),
    ("attention_weights_hf.png", "Attention of the fine-tuned pretrained model"),
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:1em 0} td,th{border:1px solid #ccc;padding:.35em .7em;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee} figure{margin:1.5em 0} figcaption{color:#555;font-size:.95em}
pre{white-space:pre-wrap;background:#f8f8f8;padding:.6em;border-radius:4px;font-size:.85em;margin:0}
.samples td{vertical-align:top;text-align:left;width:33%} .pass{color:#0a7d28;font-weight:bold} .fail{color:#b00020;font-weight:bold}
#explorer .tok{display:inline-block;padding:2px 3px;margin:1px;border:1px solid #ddd;border-radius:3px;cursor:pointer;font-family:monospace;white-space:pre}
#explorer .tok.sel{outline:2px solid #d33} #explorer select{margin-right:1em} #heat{border:1px solid #ccc;margin-top:.8em}
.muted{color:#666;font-size:.9em}
"""

SCRIPT = r"""
(function(){
  const data = JSON.parse(document.getElementById('attn-data').textContent);
  const $ = id => document.getElementById(id);
  const modelSel = $('ex-model'), layerSel = $('ex-layer'), headSel = $('ex-head');
  let selected = null;
  function fill(sel, n, prefix){ sel.innerHTML=''; for(let i=0;i<n;i++){const o=document.createElement('option');o.value=i;o.textContent=prefix+' '+i;sel.appendChild(o);} }
  function current(){ const m=data[modelSel.value]; return {m, w:m.weights[+layerSel.value][+headSel.value]}; }
  function label(t){ return t.replace(/\n/g,'\u21b5').replace(/ /g,'\u00b7') || '\u2205'; }
  function renderTokens(){
    const {m} = current(); const box=$('ex-tokens'); box.innerHTML='';
    m.tokens.forEach((t,i)=>{ const s=document.createElement('span'); s.className='tok';
      s.textContent=label(t); s.dataset.i=i;
      s.addEventListener('mouseenter',()=>highlight(i));
      s.addEventListener('click',()=>highlight(i));
      box.appendChild(s); });
    highlight(selected);
  }
  function highlight(i){
    selected = i; const {m,w} = current();
    document.querySelectorAll('#ex-tokens .tok').forEach((s,j)=>{
      s.classList.toggle('sel', j===i);
      const a = (i===null || j>i) ? 0 : w[i][j];
      s.style.background = i===null ? '' : 'rgba(220,60,40,'+a.toFixed(3)+')';
      s.title = i===null ? '' : 'attention '+a.toFixed(3); });
    $('ex-status').textContent = i===null ? 'Hover or click a token to see what it attends to.' :
      'Token '+i+' ('+label(m.tokens[i])+') attends most to token '+argmax(w[i])+' ('+label(m.tokens[argmax(w[i])])+').';
    renderHeat(w);
  }
  function argmax(r){ let b=0; r.forEach((v,i)=>{ if(v>r[b]) b=i; }); return b; }
  function renderHeat(w){
    const c=$('heat'), n=w.length, cell=Math.max(4,Math.floor(360/n)); c.width=c.height=n*cell;
    const g=c.getContext('2d');
    for(let i=0;i<n;i++) for(let j=0;j<n;j++){ const v=w[i][j]; g.fillStyle='rgb('+Math.round(255-200*v)+','+Math.round(255-160*v)+','+Math.round(255-40*v)+')'; g.fillRect(j*cell,i*cell,cell,cell); }
    if(selected!==null){ g.strokeStyle='#d33'; g.strokeRect(0,selected*cell,n*cell,cell); }
    c.dataset.signature = n+':'+w.map(r=>r.map(v=>v.toFixed(3)).join(',')).join(';').length+':'+w.flat().reduce((a,b)=>a+b*b,0).toFixed(6);
  }
  function onModel(){ const m=data[modelSel.value]; fill(layerSel,m.weights.length,'layer'); fill(headSel,m.weights[0].length,'head'); if(selected!==null && selected>=m.tokens.length) selected=null; renderTokens(); }
  Object.keys(data).forEach(k=>{const o=document.createElement('option');o.value=k;o.textContent=data[k].name;modelSel.appendChild(o);});
  modelSel.addEventListener('change',onModel); layerSel.addEventListener('change',renderTokens); headSel.addEventListener('change',renderTokens);
  onModel();
})();
"""


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _json_for_script(obj: Any) -> str:
    """JSON safe inside <script type=application/json>: no '<', '>' or '&' survive."""
    return json.dumps(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    h = "".join(f"<th>{escape(str(c))}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def explorer_data(out: Path, analysis: dict[str, Any]) -> dict[str, Any]:
    w = torch.load(out / "attention_weights.pt", weights_only=True)
    data = {}
    for key, wkey in (("scratch", "scratch"), ("pretrained", "hf")):
        weights = w[wkey].float()
        data[key] = {"name": analysis[key]["model"], "tokens": analysis[key]["tokens"],
                     "weights": [[[[round(float(v), 3) for v in row] for row in head] for head in layer]
                                 for layer in weights.tolist()]}
    return data


def budget_rows(state: dict[str, Any], cfg: dict[str, Any]) -> list[list[str]]:
    """One row per stage: its wall-time budget (training stages), the time it took, and its result."""
    s, f = state["scratch"], state["finetune"]
    s_budget, f_budget = cfg["scratch"]["train"].get("max_time"), cfg["finetune"].get("max_time")
    bought = {
        "scratch": f"{s['steps']:,} steps, {s['tokens']:,} tokens, {s['tokens_per_s']:,.0f} tokens/s; "
                   f"{state['evaluate']['scratch']['bits_per_char']:.3f} bits/char",
        "finetune": f"{f['steps']:,} steps, {f['tokens']:,} tokens, {f['tokens_per_s']:,.0f} tokens/s; "
                    f"{f['before']['bits_per_char']:.3f} -> {f['after']['bits_per_char']:.3f} bits/char "
                    "(scoring and samples before and after included in the time)",
    }
    rows = []
    for stage, res in state.items():
        if not isinstance(res, dict) or "stage_seconds" not in res:
            continue
        budget = {"scratch": s_budget, "finetune": f_budget}.get(stage)
        rows.append([stage, f"{budget:.0f} s" if budget else "-", f"{res['stage_seconds']:.1f} s", bought.get(stage, "")])
    return rows


def write_report(out: str | os.PathLike, headline: dict[str, Any], state: dict[str, Any],
                 machine: dict[str, Any]) -> Path:
    out = Path(out)
    s, p = headline["scratch"], headline["pretrained"]
    analysis = json.loads((out / "attention_analysis.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>nanobard report</title>"
             f"<meta name=viewport content='width=device-width, initial-scale=1'><style>{CSS}</style></head><body>"]
    parts.append("<h1>nanobard study report</h1>"
                 f"<p class=muted>A character-level GPT trained from scratch and a pretrained causal LM "
                 f"fine-tuned on the same text ({escape(headline['corpus'])}), scored on the same validation text.</p>")

    parts.append("<h2 id=run>What was run</h2>")
    parts.append(_table(["", "from scratch", "pretrained"], [
        ["model", f"character GPT, {cfg['scratch']['model']['n_layer']} layers, {cfg['scratch']['model']['n_head']} heads, "
                  f"{cfg['scratch']['model']['n_embd']} dims, context {cfg['scratch']['model']['block_size']}",
         f"{p['name']} ({p['reason']})"],
        ["parameters", f"{s['num_params']:,}", f"{p['num_params']:,}"],
        ["optimizer steps", s["steps"], p["steps"]],
        ["training wall time", f"{s['train_seconds']:.1f} s", f"{p['train_seconds']:.1f} s"],
        ["tokens/s", f"{s['tokens_per_s']:,.0f}", f"{p['tokens_per_s']:,.0f}"],
    ]))
    parts.append(_table(["machine", "value"], [[k, v] for k, v in machine.items()]))
    parts.append("<h3 id=budget>Time: what each stage was given and what it bought</h3>")
    parts.append(_table(["stage", "training budget", "stage took", "what it bought"], budget_rows(state, cfg)))
    parts.append(f"<details><summary>full configuration</summary><pre>{escape(json.dumps(cfg, indent=2))}</pre></details>")

    parts.append("<h2 id=comparison>Comparison on the shared validation text</h2>")
    parts.append(f"<p>Bits per character on the first {headline['score_chars']:,} characters of the validation "
                 "text (the last 10% of the corpus), sliding window with stride half the window; lower is better. "
                 "Loss reduction: first to last validation loss during training.</p>")
    e = state["evaluate"]
    parts.append(_table(["model", "parameters", "tokens scored", "nats/token (own tokenizer)", "bits/char"], [
        ["from scratch (best checkpoint)", f"{s['num_params']:,}", e["scratch"]["tokens"],
         f"{e['scratch']['nats_per_token']:.4f}", f"{e['scratch']['bits_per_char']:.4f}"],
        [f"{p['name']} before fine-tuning", f"{p['num_params']:,}", e["pretrained_before"]["tokens"],
         f"{e['pretrained_before']['nats_per_token']:.4f}", f"{e['pretrained_before']['bits_per_char']:.4f}"],
        [f"{p['name']} after fine-tuning", f"{p['num_params']:,}", e["pretrained_after"]["tokens"],
         f"{e['pretrained_after']['nats_per_token']:.4f}", f"{e['pretrained_after']['bits_per_char']:.4f}"],
    ]))
    parts.append(_table(["track", "loss reduction"], [["from scratch", f"{s['loss_reduction_pct']:.1f}%"],
                                                       [p["name"], f"{p['loss_reduction_pct']:.1f}%"]]))

    parts.append("<h2 id=figures>Figures</h2>")
    for name, caption in FIGURES:
        if (out / name).exists():
            parts.append(f"<figure><img alt='{escape(name)}' src='{_img(out / name)}'>"
                         f"<figcaption>{escape(caption)} ({escape(name)})</figcaption></figure>")

    parts.append("<h2 id=samples>Samples</h2><p>Same prompt, decoding settings and seed in each row.</p>")
    samples = state["samples"]["samples"]
    for prompt in dict.fromkeys(r["prompt"] for r in samples):
        parts.append(f"<h3>Prompt: <code>{escape(prompt)}</code></h3><table class=samples>"
                     "<tr><th>strategy</th><th>from scratch</th><th>pretrained, before</th><th>pretrained, after</th></tr>")
        for strategy in ("greedy", "top_k", "temperature"):
            cells = []
            for model in ("scratch", "before", "after"):
                txt = next((r["text"] for r in samples if r["prompt"] == prompt and r["strategy"] == strategy
                            and r["model"] == model), "")
                cells.append(f"<td><pre>{escape(prompt + txt)}</pre></td>")
            parts.append(f"<tr><td>{escape(strategy)}</td>{''.join(cells)}</tr>")
        parts.append("</table>")

    parts.append("<h2 id=attention>Attention findings</h2><ul>")
    for key in ("scratch", "pretrained"):
        for f in analysis[key]["findings"]:
            parts.append(f"<li>{escape(f)}</li>")
    parts.append("</ul>")
    for key in ("scratch", "pretrained"):
        a = analysis[key]
        top = sorted(a["heads_stats"], key=lambda h: -h["previous_token"])[:6]
        parts.append(f"<h3>{escape(a['model'])}: heads with most previous-token attention</h3>")
        parts.append(_table(["layer", "head", "self", "previous token", "mean distance", "entropy (bits)"],
                            [[h["layer"], h["head"], f"{h['self_attention']:.2f}", f"{h['previous_token']:.2f}",
                              f"{h['mean_distance']:.1f}", f"{h['entropy_bits']:.2f}"] for h in top]))

    parts.append("<h2 id=explorer-h>Attention explorer</h2>"
                 f"<p class=muted>Text: <code>{escape(analysis['text'])}</code></p>"
                 "<div id=explorer><label>model <select id=ex-model></select></label>"
                 "<label>layer <select id=ex-layer></select></label><label>head <select id=ex-head></select></label>"
                 "<div id=ex-tokens></div><p id=ex-status></p><canvas id=heat></canvas></div>")

    parts.append("<h2 id=causality>Causality check</h2><p>Can any position depend on a later one? Two ways: "
                 "attention weights above the diagonal, and the gradient of each position's output with respect "
                 "to the input embeddings of all later positions. Both must be exactly zero.</p>")
    rows = []
    for key in ("scratch", "pretrained"):
        c = analysis[key]["causality"]
        rows.append((analysis[key]["model"], c))
    parts.append("<table><tr><th>model</th><th>attention above diagonal (max)</th><th>result</th>"
                 "<th>future gradient (max)</th><th>result</th></tr>")
    for name, c in rows:
        parts.append(f"<tr><td>{escape(name)}</td><td>{c['attention_above_diagonal_max']:.3g}</td>"
                     f"<td class={c['attention_check']}>{c['attention_check']}</td><td>{c['future_gradient_max']:.3g}</td>"
                     f"<td class={c['gradient_check']}>{c['gradient_check']}</td></tr>")
    parts.append("</table>")

    parts.append(f"<script type='application/json' id=attn-data>{_json_for_script(explorer_data(out, analysis))}</script>")
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    path = out / "report.html"
    path.write_text("".join(parts), encoding="utf-8")
    return path
