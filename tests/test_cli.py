"""The command line's promises: bad input is one line (exit 2), a finished run's report never shrinks, and a finished
run given changed inputs says which stages are stale instead of reusing them silently."""
import json, shutil, subprocess, sys
from pathlib import Path
import pytest
from conftest import cli
from dnf_rlhf.loopback import LoopbackServer


def visible(text:str) -> list[str]:
    "The non-blank lines a terminal shows for `text`: of each line, what follows its last carriage return (progress bars)."
    return [v for line in text.split('\n') if (v := line.rsplit('\r', 1)[-1]).strip()]


def one_line_error(r, *names) -> str:
    "Assert `r` stopped on bad input: exit code 2, one line on stderr naming each of `names`, no traceback; that line."
    lines = visible(r.stderr)
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert len(lines) == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    for n in names: assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def _bad_inputs(tmp):
    "(name, dnf-rlhf arguments, what the error line must name) of every kind of bad input."
    tmp.mkdir(exist_ok=True)
    (tmp/'bad.json').write_text('{"name": "x",\n "persona": }', encoding='utf-8')
    (tmp/'bad.toml').write_text('name = "x"\npersona =\n', encoding='utf-8')
    (tmp/'persona.json').write_text('{"persona": ""}', encoding='utf-8')
    corpus = tmp/'corpus'; corpus.mkdir()
    (corpus/'broken.md').write_text('---\nid: broken\ntitle: 깨진 문서\n\n본문이 시작되지 않았다.\n', encoding='utf-8')
    (tmp/'corpus.json').write_text(json.dumps({'corpus_dir': str(corpus)}), encoding='utf-8')
    data = tmp/'data'; data.mkdir()
    (data/'retrieval_train.jsonl').write_text('{"question": "어디?", "answer": "숲", "start": 0, "end": 1, "doc_id": "x"}\n'
                                              '{"question": "끊긴 줄\n', encoding='utf-8')
    (tmp/'data.json').write_text(json.dumps({'datasets_dir': str(data)}), encoding='utf-8')
    (tmp/'afile').write_text('not a folder')
    out = str(tmp/'run')
    stage = lambda cmd, project: [cmd, '--preset', 'tiny', '--out', out, '--project', str(tmp/project)]
    return [('preset', ['run', '--preset', 'colab-h100', '--out', out], ['colab-h100']),
            ('json', stage('lore', 'bad.json'), ['bad.json:2', 'not valid JSON']),
            ('toml', stage('lore', 'bad.toml'), ['bad.toml', 'not valid TOML']),
            ('missing', stage('lore', 'missing.json'), ['missing.json', 'not found']),
            ('persona', stage('lore', 'persona.json'), ['persona.json', "field 'persona'"]),
            ('lore', stage('lore', 'corpus.json'), ['broken.md', 'never closed']),
            ('lore-in-run', stage('run', 'corpus.json'), ['broken.md', 'never closed']),  # under the progress bar
            ('jsonl', stage('rag', 'data.json'), ['retrieval_train.jsonl:2', 'not valid JSON']),  # the index learns from it
            ('out-is-a-file', ['run', '--preset', 'tiny', '--out', str(tmp/'afile')], ['afile', 'not a folder']),
            ('stage-typo', ['run', '--preset', 'tiny', '--out', out, '--stages', 'sfft'], ['sfft'])]


def test_bad_input_is_one_line_with_exit_code_2(tmp_path, test_env):
    "Each kind of bad input: one stderr line naming the file (line, field), exit code 2; a traceback only with --debug."
    for name, args, names in _bad_inputs(tmp_path):
        one_line_error(cli(*args, env=test_env, timeout=300), *names)
    d = cli('--debug', 'run', '--preset', 'colab-h100', '--out', str(tmp_path/'run'), env=test_env, timeout=300)
    assert d.returncode == 2 and 'Traceback' in d.stderr, d.stderr
    assert d.stderr.strip().splitlines()[-1].startswith("dnf-rlhf: error: unknown preset 'colab-h100'"), d.stderr


def test_datagen_bad_flags_are_one_line_with_exit_code_2(tmp_path, test_env):
    "`--concurrency 0` used to wait forever, `--limit -1` meant 'all chunks but one'; both stop before any request."
    (tmp_path/'bad.toml').write_text('persona = \n', encoding='utf-8')
    cases = [(['--concurrency', '0'], ['--concurrency', 'at least 1', 'got 0']),
             (['--limit', '-1'], ['--limit', 'at least 1', 'got -1']),
             (['--project', str(tmp_path/'bad.toml')], ['bad.toml', 'not valid TOML']),
             (['--project', str(tmp_path/'missing.json')], ['missing.json', 'not found']),
             (['--tasks', 'qa', 'qna'], ['qna'])]
    with LoopbackServer() as srv:
        for extra, names in cases:
            r = subprocess.run([sys.executable, '-m', 'dnf_rlhf.datagen', '--out', str(tmp_path/'gen'), '--base-url',
                                srv.base_url, '--model', 'loopback', '--no-progress', *extra],
                               env=test_env, capture_output=True, text=True, timeout=60)
            one_line_error(r, *names)
        assert srv.log == []  # no request was sent


def test_a_rerun_never_shrinks_the_report(tmp_path, test_env):
    "A typo in --stages leaves the report as it was; a rerun that reuses a stage keeps the time it took (not 0.0)."
    out = tmp_path/'run'
    args = ('run', '--preset', 'tiny', '--out', str(out), '--stages', 'lore')
    r = cli(*args, env=test_env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    first = json.loads((out/'report.json').read_text())
    (lore,) = first['stages']
    assert lore['seconds'] > 0 and not lore['reused'], lore
    before = {p: (out/p).read_bytes() for p in ('report.json', 'report.md')}
    typo = cli('run', '--preset', 'tiny', '--out', str(out), '--stages', 'sfft', env=test_env, timeout=300)
    one_line_error(typo, 'sfft')
    assert {p: (out/p).read_bytes() for p in before} == before
    r = cli(*args, env=test_env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads((out/'report.json').read_text())
    assert again['stages'] == [dict(lore, reused=True)], (again['stages'], lore)
    assert again['total_seconds'] == first['total_seconds'] and '| lore | 0.0 |' not in (out/'report.md').read_text()


def test_changed_project_inputs_are_caught(tmp_path, test_env):
    "A finished run given a changed persona or corpus names the stale stage and stops; --rebuild rebuilds it."
    from dnf_rlhf.core import data_dir
    corpus, project, out = tmp_path/'lore', tmp_path/'project.json', tmp_path/'run'
    shutil.copytree(data_dir()/'lore', corpus)
    project.write_text(json.dumps({'corpus_dir': str(corpus)}), encoding='utf-8')
    args = ('run', '--preset', 'tiny', '--out', str(out), '--project', str(project), '--stages', 'lore')
    r = cli(*args, env=test_env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    before = {p: (out/p).read_bytes() for p in ('report.json', 'report.md', 'lore/manifest.json')}
    unchanged = lambda: {p: (out/p).read_bytes() for p in before} == before
    project.write_text(json.dumps({'corpus_dir': str(corpus), 'persona': '요리를 돕는 친절한 도우미예요.'}), encoding='utf-8')
    one_line_error(cli(*args, env=test_env, timeout=300), 'lore', 'project persona changed', '--rebuild')
    assert unchanged()
    project.write_text(json.dumps({'corpus_dir': str(corpus)}), encoding='utf-8')
    doc = sorted(corpus.glob('*.md'))[0]
    good = doc.read_bytes() + '\n이 문장은 나중에 더했어요.\n'.encode()
    doc.write_bytes(good)
    one_line_error(cli(*args, env=test_env, timeout=300), 'lore (lore changed', '--rebuild')
    assert unchanged()
    doc.write_bytes(b'\xff' + good)  # a corpus file that is not UTF-8: rebuilding the stage names it
    r = cli(*args, '--rebuild', env=test_env, timeout=300)
    assert r.returncode == 2 and doc.name in r.stderr and 'not UTF-8' in r.stderr, r.stderr[-3000:]
    assert 'Traceback' not in r.stderr, r.stderr[-3000:]
    doc.write_bytes(good)
    r = cli(*args, '--rebuild', env=test_env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out/'report.json').read_text())
    assert [(s['stage'], s['reused']) for s in rep['stages']] == [('lore', False)]
    r = cli(*args, env=test_env, timeout=300)  # now nothing is stale: reused
    assert r.returncode == 0 and json.loads((out/'report.json').read_text())['stages'][0]['reused'], r.stderr[-3000:]
