"The lore corpus and facts table: counts, facts stated by their documents, no near-duplicates, clear errors."
import pytest
from dnf_rlhf.lore import load_corpus, load_facts, near_duplicates, hangul_count, LoreError, ATTRIBUTES

@pytest.fixture(scope='module')
def docs(): return load_corpus()

def test_counts(docs):
    assert len(docs) >= 60
    assert sum(hangul_count(d.text) for d in docs) >= 60_000
    assert all(len(d.text) >= 600 for d in docs)
    assert len(load_facts(docs=docs)) >= 300

def test_every_fact_value_appears_in_its_document(docs):
    by_id = {d.id: d for d in docs}
    for f in load_facts(docs=docs):
        assert f.value in by_id[f.doc_id].text, f
        assert f.attribute == '정체' or f.attribute in ATTRIBUTES[by_id[f.doc_id].category], f

def test_required_entities(docs):
    titles = {d.title for d in docs}
    assert {'엘븐가드', '헨돈마이어', '머크우드', '타우킹 샤우타', '오필리아 베이그란스'} <= titles
    facts = {(f.entity, f.attribute): f for f in load_facts(docs=docs)}
    assert facts[('오필리아 베이그란스', '신앙')].question == "'오필리아 베이그란스'는 어떤 종교 집단의 신도인가요?"
    assert facts[('머크우드', '정체')].question == "머크우드는 어떤 곳인가요?"
    assert facts[('타우킹 샤우타', '정체')].question == "타우킹 샤우타는 누구인가요?"

def test_no_near_duplicates(docs):
    assert near_duplicates(docs, threshold=0.3) == []

def test_malformed_document_fails_with_its_name(tmp_path, docs):
    src = docs[0].path
    text = open(src, encoding='utf-8').read().replace('category:', 'kategory:')
    (tmp_path/'broken-doc.md').write_text(text, encoding='utf-8')
    with pytest.raises(LoreError, match=r"broken-doc\.md: missing field 'category'"):
        load_corpus(tmp_path)
