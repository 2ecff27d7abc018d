"The packaged tiny base: built from the text and config the tiny preset would train it from, small, a real model; and `dnf-rlhf ship-base` end to end at the test size."
import json
import pytest, torch
from dnf_rlhf.core import MANIFEST, Run, data_dir, get_preset, load_json
from dnf_rlhf.demo_data import ASKED, load_demo, load_splits, record_group
from dnf_rlhf.lore import load_facts
from dnf_rlhf.tinybase import SHIPPED_BASE, SHIP_COMMAND, base_corpus, base_fact_accuracy, corpus_hash, shipped_base
from conftest import cli

PKG = data_dir()/SHIPPED_BASE

def cfg_of(preset:str, **overrides):
    return Run(get_preset(preset), overrides={'tinybase': overrides} if overrides else {}).cfg('tinybase')

def test_packaged_base_is_current():
    cfg = cfg_of('tiny')
    assert shipped_base(cfg, corpus_hash(*base_corpus(cfg)[:2])) == PKG, \
        f"dnf_rlhf/data/{SHIPPED_BASE}/ was built from another config or text: rebuild it with `{SHIP_COMMAND}`"

def test_packaged_base_is_small_fp16_and_knows_its_drills():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    m = load_json(PKG/MANIFEST)
    assert {'config', 'data_hash', 'metrics', 'history', 'command', 'versions'} <= set(m)
    assert sum(p.stat().st_size for p in PKG.iterdir()) <= 40 * 2**20
    model, tok = AutoModelForCausalLM.from_pretrained(PKG), AutoTokenizer.from_pretrained(PKG)
    assert next(model.parameters()).dtype == torch.float16  # stored in fp16; `unpack_base` loads it in fp32
    splits = load_splits()
    recs = [r for r in load_demo('sft', 'train') if r.kind == 'fact_medium' and record_group(r, splits) == ASKED][:30]
    acc = base_fact_accuracy(model.float(), tok, recs, load_facts())
    assert acc >= 0.8, f"the packaged base states {acc:.2f} of 30 drilled facts"

def test_ship_base_command(tmp_path, test_env):
    r = cli('ship-base', '--preset', 'test', '--set', 'tinybase.steps=3', '--out', str(tmp_path/'run'),
            '--dest', str(tmp_path/'pkg'), env=test_env)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    m = load_json(tmp_path/'pkg'/MANIFEST)
    assert out['data_hash'] == m['data_hash'] and 'ship-base' in m['command'] and m['config']['steps'] == 3
    cfg = cfg_of('test', steps=3)
    assert shipped_base(cfg, corpus_hash(*base_corpus(cfg)[:2]), tmp_path/'pkg') == tmp_path/'pkg'
    assert shipped_base(cfg_of('test', steps=4), m['data_hash'], tmp_path/'pkg') is None
