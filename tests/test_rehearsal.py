"""Dress rehearsal of a GPU preset on this CPU: random-weight stand-ins of two hub families (GPT-NeoX like polyglot-ko,
Llama like Llama-3 / EXAONE 4 / Qwen, with its own chat template) go through `colab-t4`'s code path — 4-bit NF4,
16-bit mixed precision (fp16's CPU substitute bf16), gradient checkpointing, the shared PPO layout — SFT → RM → PPO →
eval, then one request to the chat server; and `--base` on a Llama-family folder at the `test` size."""
import openai, pytest
from conftest import cli
from dnf_rlhf.core import Run, get_preset, load_json, CPU_SUBSTITUTES

@pytest.fixture(scope='module')
def standins(tmp_path_factory):
    "Each family's stand-in folder, written with `save_pretrained` (loaded exactly as a hub snapshot is)."
    from dnf_rlhf.models import standin_base, STANDINS
    d = tmp_path_factory.mktemp('standins')
    return {f: standin_base(f, d/f) for f in STANDINS}

def _served_answer(run) -> tuple:
    "One chat request through the real `openai` client to the server on 127.0.0.1 loading the run's PPO model."
    from dnf_rlhf.serve import BackgroundServer, Engine, ServeConfig, load_chat_model, make_app
    model, tok, what = load_chat_model(run)
    assert hasattr(model, 'peft_config')  # a 4-bit base keeps its adapter (merging would need re-quantizing)
    engine = Engine(model, tok, None, ServeConfig(fit_tokens=run.preset.sft.max_len, retrieval=False))
    with BackgroundServer(make_app(engine)) as srv:
        c = openai.OpenAI(base_url=srv.base_url, api_key='unused', max_retries=0, timeout=300)
        r = c.chat.completions.create(model='dnf-rlhf', messages=[{'role': 'user', 'content': '바칼은 누구인가요?'}], max_tokens=8)
    return what, r.choices[0]

@pytest.mark.parametrize('family', ['polyglot-ko', 'llama-3'])
def test_colab_t4_rehearsal(family, standins, tmp_path, test_env):
    out, base = tmp_path/'run', str(standins[family])
    r = cli('run', '--preset', 'colab-t4', '--base', base, '--rehearse', '--out', str(out), env=test_env, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = load_json(out/'report.json')
    assert (rep['preset'], rep['base'], rep['rehearsal']) == ('colab-t4', base, True)
    for stage in ('sft', 'rm'):  # what the preset says really ran: NF4 layers, its fp16 compute, checkpointing
        info = load_json(out/stage/'manifest.json')['base']
        assert (info['quantization'], info['dtype'], info['source']) == ('nf4', CPU_SUBSTITUTES['fp16'], base), info
        assert info['nf4_layers'] > 0 and load_json(out/stage/'metrics.json')[f'{stage}/gradient_checkpointing'] is True
    ppo, man = load_json(out/'ppo'/'metrics.json'), load_json(out/'ppo'/'manifest.json')
    assert man['config']['layout'] == 'shared' and ppo['ppo/nf4_layers'] > 0 and ppo['ppo/gradient_checkpointing'] is True
    assert ppo['ppo/steps'] == 2
    ev = load_json(out/'eval'/'metrics.json')
    assert all(k in ev for k in ('eval/ppo/reward', 'eval/sft/eos_rate', 'eval/base+rag/tokens'))
    eot = load_json(out/'sft'/'manifest.json')['base']['end_of_turn']
    assert eot == ('<|eot_id|>' if family == 'llama-3' else '<|endoftext|>')  # SFT labels end on the template's end of turn
    what, choice = _served_answer(Run(get_preset('colab-t4').with_base(base).rehearsed(), dir=out))
    assert what.endswith('ppo/adapter') and isinstance(choice.message.content, str)
    assert choice.finish_reason in ('stop', 'length')

def test_any_base_at_the_test_size(standins, tmp_path, test_env):
    "`dnf-rlhf run --base <llama-family folder>` end to end at the `test` size (the tiny preset's sizes, another base)."
    out, base = tmp_path/'run', str(standins['llama-3'])
    r = cli('run', '--preset', 'tiny', '--base', base, '--out', str(out), env=test_env, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = load_json(out/'report.json')
    assert (rep['preset'], rep['base']) == ('test', base)
    assert load_json(out/'tinybase'/'metrics.json')['base/hub_id'] == base  # recorded, not trained
    sft = load_json(out/'sft'/'manifest.json')['base']
    assert (sft['source'], sft['end_of_turn'], sft['quantization']) == (base, '<|eot_id|>', None)
    assert load_json(out/'sft'/'metrics.json')['sft/eos_rate'] >= 0  # held-out answers were generated and scored
    assert (out/'eval'/'metrics.json').exists()
