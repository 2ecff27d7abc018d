"""The dependency floors of pyproject.toml are not below the APIs the code calls (issue #18, defect 3).

Colab (and any machine with an older preinstalled package) keeps what it has whenever the floor allows it, so a floor
below an API the code calls turns into a TypeError in the middle of a run. Each row of API_FLOORS names the first
release with an API the code needs, and where it is called; `tools/check_floors.sh` runs the test-size pipeline with
exactly the floors installed.
"""
import re
import pytest
from packaging.version import Version
from conftest import ROOT

# (package, first version with the API, where it is called: (file, snippet that must still be there) or None, the API)
API_FLOORS = [
    # TrainingArguments.train_sampling_strategy (+ length_column_name) replaced group_by_length in transformers 5.2.0;
    # 5.0/5.1 and 4.x reject it with a TypeError
    ('transformers', '5.2.0', ('dnf_rlhf/sft.py', "train_sampling_strategy='group_by_length' if"), 'SFTConfig(train_sampling_strategy=)'),
    ('transformers', '5.2.0', ('dnf_rlhf/reward.py', "train_sampling_strategy='group_by_length'"), 'RewardConfig(train_sampling_strategy=)'),
    # warmup_steps became a float that is a ratio when < 1 in 5.0.0; 4.x takes an int and warms up for 0.05 steps
    ('transformers', '5.0.0', ('dnf_rlhf/sft.py', 'warmup_steps=cfg.warmup_ratio'), 'SFTConfig(warmup_steps=<ratio>)'),
    ('transformers', '5.0.0', ('dnf_rlhf/reward.py', 'warmup_steps=cfg.warmup_ratio'), 'RewardConfig(warmup_steps=<ratio>)'),
    # a GPT-NeoX config saved by transformers 5 (`rope_parameters`) loads back with its partial_rotary_factor only from
    # 5.5.0: 5.0-5.4 reset it to 0.25 (`rope_parameters["partial_rotary_factor"] = kwargs.pop("rotary_pct", 0.25)` in
    # GPTNeoXConfig), so the tiny base (rotary_pct 0.5) reloads with other rotary dims than it was trained with and every
    # later stage silently starts from a different model (SFT's starting eval loss 2.93 instead of 2.82 at 5.2.0)
    ('transformers', '5.5.0', ('dnf_rlhf/tinybase.py', 'rotary_pct=cfg.rotary_pct'), 'GPTNeoXConfig(rotary_pct=) survives save/load'),
    # `dtype=` (not `torch_dtype=`) in from_pretrained (models.load_pretrained, the one loader): 4.56.0
    ('transformers', '4.56.0', ('dnf_rlhf/models.py', 'dtype=torch_dtype(policy)'), 'from_pretrained(dtype=)'),
    # DynamicCache.batch_repeat_interleave / batch_select_indices (ppo.backbone_hidden, ppo.sample_responses): 4.42.0
    ('transformers', '4.42.0', ('dnf_rlhf/ppo.py', 'kv.batch_repeat_interleave(B)'), 'DynamicCache.batch_repeat_interleave'),
    ('transformers', '4.42.0', ('dnf_rlhf/ppo.py', 'kv.batch_select_indices(keep)'), 'DynamicCache.batch_select_indices'),
    # transformers 5.5.0 requires tokenizers>=0.22.0,<=0.23.0 and huggingface-hub>=1.5.0; tokenizers 0.22.0 requires
    # huggingface-hub<1.0, so 0.22.1 (hub<2.0) is the first that installs beside transformers 5.5.0
    ('tokenizers', '0.22.1', None, 'required by transformers 5.5.0 (with its huggingface-hub>=1.5)'),
    # PeftModel.set_adapter(adapter, inference_mode=...): 0.19.0 (0.17/0.18 have it on the tuner, not on PeftModel)
    ('peft', '0.19.0', ('dnf_rlhf/ppo.py', "self.peft.set_adapter(adapter, inference_mode="), 'PeftModel.set_adapter(inference_mode=)'),
    # set_peft_model_state_dict returns the load result (missing_keys / unexpected_keys): 0.4.0
    ('peft', '0.4.0', ('dnf_rlhf/ppo.py', 'res = set_peft_model_state_dict('), 'set_peft_model_state_dict(...).missing_keys'),
    # SFTConfig(completion_only_loss=, pad_to_multiple_of=, max_length=), RewardConfig(center_rewards_coefficient=),
    # RewardTrainer on pre-tokenized chosen_ids/rejected_ids (its collator reads `chosen_ids`/`rejected_ids`):
    # all in trl 1.0.0, the floor already declared, which the pipeline passes with (not searched lower: 1.0 is the API line)
    ('trl', '1.0.0', ('dnf_rlhf/sft.py', 'completion_only_loss=True'), 'SFTConfig(completion_only_loss=)'),
    ('trl', '1.0.0', ('dnf_rlhf/reward.py', 'center_rewards_coefficient=cfg.center_rewards_coefficient'), 'RewardConfig(center_rewards_coefficient=)'),
    ('trl', '1.0.0', ('dnf_rlhf/reward.py', 'rows.append(dict(chosen_ids=c, rejected_ids=r'), 'RewardTrainer on chosen_ids/rejected_ids'),
    # trl 1.0.0 requires accelerate>=1.4.0 and datasets>=4.7.0 (its Requires-Dist)
    ('accelerate', '1.4.0', None, 'required by trl 1.0.0'),
    ('datasets', '4.7.0', None, 'required by trl 1.0.0'),
    # Dataset.from_list (sft.tokenize_records, reward.tokenize_pairs): datasets 2.5.0
    ('datasets', '2.5.0', ('dnf_rlhf/sft.py', 'Dataset.from_list(kept)'), 'Dataset.from_list'),
    # transformers 5.5.0 loads 4-bit models only with bitsandbytes >= 0.46.1 (its BITSANDBYTES_MIN_VERSION)
    ('bitsandbytes', '0.46.1', ('dnf_rlhf/core.py', "BitsAndBytesConfig(load_in_4bit=True"), 'BitsAndBytesConfig 4-bit under transformers 5.5'),
    # NF4 quantize_4bit/dequantize_4bit on CPU (core.four_bit_usable, the CPU nf4 tests): the CPU kernels of 0.46.1
    ('bitsandbytes', '0.46.1', ('dnf_rlhf/core.py', "F.quantize_4bit(x, quant_type='nf4')"), 'quantize_4bit on CPU'),
]
PACKAGES = sorted({p for p, *_ in API_FLOORS})

def declared_floors(text:str|None=None) -> dict[str, str]:
    "{package: X} of every `package>=X` in pyproject.toml's [project] dependencies."
    text = text if text is not None else (ROOT/'pyproject.toml').read_text(encoding='utf-8')
    deps = re.search(r'^dependencies\s*=\s*\[(.*?)^\]', text, re.S | re.M).group(1)
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r'"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^",;\s]*)', deps)}

def test_declared_floors_parse():
    f = declared_floors('dependencies = [\n    "torch>=2.3",\n    "bitsandbytes>=0.48; platform_system != \'Darwin\'",\n]\n')
    assert f == {'torch': '2.3', 'bitsandbytes': '0.48'}
    assert set(PACKAGES) <= set(declared_floors()), set(PACKAGES) - set(declared_floors())

@pytest.mark.parametrize('row', API_FLOORS, ids=lambda r: f"{r[0]}>={r[1]}:{r[3]}")
def test_floor_not_below_api(row):
    pkg, first, where, api = row
    floor = declared_floors()[pkg]
    assert Version(floor) >= Version(first), f"pyproject declares {pkg}>={floor}, but {api} needs {pkg}>={first}"

@pytest.mark.parametrize('row', [r for r in API_FLOORS if r[2]], ids=lambda r: f"{r[0]}:{r[3]}")
def test_api_is_still_called(row):
    "A row whose call has gone is stale: drop it (and maybe lower the floor) rather than keep a reason that no longer holds."
    pkg, first, (path, snippet), api = row
    assert snippet in (ROOT/path).read_text(encoding='utf-8'), f"{path} no longer calls {api} ({snippet!r})"

def test_installed_versions_have_the_apis():
    "The APIs of the table exist in what is installed here (the newest tested versions)."
    import inspect
    from transformers import TrainingArguments
    from peft import PeftModel
    from trl import SFTConfig, RewardConfig
    assert {'train_sampling_strategy', 'length_column_name', 'warmup_steps'} <= set(TrainingArguments.__dataclass_fields__)
    assert TrainingArguments.__dataclass_fields__['warmup_steps'].type in (float, 'float')
    assert 'inference_mode' in inspect.signature(PeftModel.set_adapter).parameters
    assert {'completion_only_loss', 'pad_to_multiple_of', 'max_length'} <= set(SFTConfig.__dataclass_fields__)
    assert {'center_rewards_coefficient', 'pad_to_multiple_of', 'max_length'} <= set(RewardConfig.__dataclass_fields__)
