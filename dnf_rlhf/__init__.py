"""던전앤파이터 세계관 챗봇으로 배우는 RLHF: ChatGPT 데이터셋, QLoRA SFT, 보상 모델, PPO, 평가, RAG, 서빙

Modules:

- `dnf_rlhf.datagen`: 세계관 청크를 RLHF에 필요한 세 데이터셋(SFT, 보상 모델, PPO)으로 바꿉니다. ChatGPT든 vLLM, Ollama, llama.cpp든 OpenAI 호환 서버면 되고, 밤새 돌려도 돈 낸 결과를 잃지 않습니다.
- `dnf_rlhf.demo_data`: API 키 없이도 `tiny` 프리셋과 테스트가 돌 수 있도록, 세계관 문서와 사실 표에서 규칙과 손으로 쓴 문장으로 결정적으로 만든 데이터셋: 작은 모델이 배울 수 있고, 모든 정답이 사실 표의 행으로 거슬러 올라갑니다.
- `dnf_rlhf.dpo`: 04의 선호 쌍으로 SFT 모델을 곧바로 고칩니다: 보상 모델도, 샘플링도, 가치 머리도 없이 TRL `DPOTrainer` + QLoRA. 기준 모델은 같은 기반 모델 위에 얹은 SFT 어댑터의 얼린 사본이라, 모델을 두 벌 올리지 않습니다.
- `dnf_rlhf.evaluate`: 같은 held-out 질문과 같은 디코딩으로 base, SFT, PPO를 (검색 없이 / 검색과 함께) 비교합니다: 보상 모델 점수와 승률, 사실표로 채점하는 정확도, 해요체, EOS와 길이, 반복(distinct-n), 적대적 질문에 대한 무해함, 그리고 G-Eval 심판 표. 선택 단계(DPO, GRPO, RLOO)를 학습했다면 SFT·PPO와 한 표에서: SFT와의 KL, 걸린 시간과 메모리까지.
- `dnf_rlhf.grpo`: PPO(05)의 프롬프트에 답을 여러 개 뽑고, 그 무리의 평균을 기준선 삼아 SFT 어댑터를 고칩니다: TRL `GRPOTrainer` + QLoRA. 보상은 함수들의 가중합(기본: 사실표로 검증하는 사실 보상; 형식 검사와 보상 모델도 더할 수 있음)이고, 기준 모델은 SFT 어댑터의 얼린 사본입니다.
- `dnf_rlhf.judge`: 두 답을 여섯 기준(친근함, 무해함, 이해 가능성, 자연스러움, 맥락 유지, 전반적인 품질)으로 1–5점 채점하고, 합이 높은 쪽을 chosen으로 삼는 규칙으로 보상 모델 쌍을 만듭니다.
- `dnf_rlhf.models`: 기반 모델을 불러오는 곳은 이 모듈 하나입니다: 허브 id나 폴더, 고정된 리비전, 4비트 NF4, 장치, 채팅 템플릿과 턴 끝 토큰, pad ≠ EOS, 그리고 LoRA 대상 모듈. GPU 프리셋을 CPU에서 예행연습할 대역 모델(stand-in)도 여기서 만듭니다.
- `dnf_rlhf.ppo`: 정책(LoRA), 기준 모델(고정된 SFT 어댑터), 보상 모델(LoRA + 점수 층, 또는 언어 모델 머리), 가치 머리를 기반 모델 **하나**에 얹어 무료 Colab GPU에 들어가게 하고, 식 하나하나를 코드 바로 위에 두고 테스트합니다.
- `dnf_rlhf.rag`: 세계관 청크를 찾아 답에 붙입니다: Kiwi 형태소로 자른 BM25와 문장 임베딩(FAISS)을 순위 융합(RRF)으로 섞고, 인덱스는 저장해 두었다가 말뭉치가 바뀌면 다시 만듭니다.
- `dnf_rlhf.reward`: 사람(또는 심판 모델)이 더 낫다고 고른 답에 더 높은 점수를 주는 모델을 LoRA로 학습하고(점수 층: TRL `RewardTrainer`, 또는 언어 모델 머리: SimPO의 보상), 길이나 단어만 보고 맞히는 것은 아닌지, 모든 입력에 같은 점수를 주지는 않는지 검사합니다.
- `dnf_rlhf.rloo`: GRPO(05c)와 같은 프롬프트, 같은 무리, 같은 보상 함수로 SFT 어댑터를 고칩니다: TRL `RLOOTrainer` + QLoRA. 다른 것은 둘: 기준선은 **자기를 뺀** 나머지 답들의 평균이고, KL은 손실이 아니라 보상에서 뺍니다.
- `dnf_rlhf.serve`: SFT 모델을 `openai` 클라이언트가 그대로 쓰는 API로 내놓습니다. 생성은 이벤트 루프 밖의 작업 스레드에서, 요청은 크기가 정해진 대기열에서 기다리고, 넘치면 503과 Retry-After로 답합니다.
- `dnf_rlhf.sft`: TRL `SFTTrainer` + PEFT LoRA(+ CUDA에서는 bitsandbytes 4비트 NF4)로 기반 모델이 질문에 페르소나로 답하고 EOS에서 멈추도록 가르칩니다.
- `dnf_rlhf.tinybase`: 이 프로젝트의 한국어 글로 바이트 수준 BPE 토크나이저와 작은 GPT-NeoX(polyglot-ko와 같은 구조)를 처음부터 학습해, 허브 모델과 똑같이 불러 쓰는 Hugging Face 모델 폴더로 저장합니다."""

__version__ = "0.1.0"
