"""`train --val-cache` fits the decision stage on validation recordings replayed in stamp order;
the checkpoint carries the values, and bag-eval (like the node) decides with them unless the
parameters set decision.*, saying which values it uses and where they come from."""

import json
from dataclasses import fields, replace

import numpy as np
import pytest
from node_helpers import make_head, write_params

from step_ros.data.synth import LABELS, SYMMETRIC_PAIRS
from step_ros.data.timeline import Segment, Timeline
from step_ros.evaluate.stream_eval import StreamRecord
from step_ros.learn.decision_fit import MAX_CHANGES_RATIO, fit_decision
from step_ros.model.checkpoint import CheckpointError, read_meta
from step_ros.stream.config import PerceptionConfig, load_params_file
from step_ros.stream.decision import DecisionConfig
from step_ros.stream.runtime import decision_for
from step_ros.tools import bag_eval, extract, train
from step_ros.tools.synth_bag import write_synth_bag

S = 1_000_000_000
TOPIC = '/camera/image_raw'


def flickering_recording(seed: int) -> tuple[list[StreamRecord], Timeline, int]:
    """40 s of 'wave' (3 s) and 'none' (2 s) at 8 predictions per second from a 1 s window;
    bursts of 4 raw windows (0.5 s) confidently name 'stir' instead, 6 % of the time."""
    rng = np.random.default_rng(seed)
    labels = ('none', 'stir', 'wave')
    segments, t = [], 0
    while t < 40 * S:
        segments += [Segment(t, t + 3 * S, 'wave'), Segment(t + 3 * S, t + 5 * S, 'none')]
        t += 5 * S
    timeline = Timeline(segments)
    records, burst = [], 0
    for i in range(8, 320):
        stamp = i * S // 8
        truth = timeline.label_at(stamp - S // 2)  # a window names about its middle
        if burst == 0 and rng.random() < 0.06:
            burst = 4
        probs = np.full(3, 0.1)
        probs[labels.index('stir' if burst else truth)] = 0.8
        burst = max(0, burst - 1)
        records.append(StreamRecord(stamp_ns=stamp, window_start_ns=stamp - S, label='',
                                    probs=probs, ambiguous=False))
    return records, timeline, records[-1].stamp_ns


def fit(recordings) -> tuple[DecisionConfig, dict]:
    """fit_decision on recordings of ('none', 'stir', 'wave') from a 1 s window."""
    return fit_decision(recordings, labels=('none', 'stir', 'wave'), background='none',
                        window_seconds=1.0, switch_fraction=0.5, temperature=1.0,
                        progress=False)


def test_the_fit_beats_the_defaults_and_keeps_changes_near_the_truth():
    chosen, summary = fit([flickering_recording(seed) for seed in (0, 1)])
    fitted, defaults = summary['chosen'], summary['defaults']
    assert summary['recordings'] == 2 and summary['points'] >= 100, summary
    assert chosen == DecisionConfig(**summary['values'])
    # The defaults' row is the default point's (taken from the grid, not replayed twice).
    assert DecisionConfig(**{f.name: defaults[f.name] for f in fields(DecisionConfig)}) \
        == DecisionConfig(), defaults
    # The defaults START on the flicker; the fitted values do not, and score higher.
    assert defaults['changes_ratio'] > MAX_CHANGES_RATIO, defaults
    assert fitted['changes_ratio'] <= MAX_CHANGES_RATIO, fitted
    assert fitted['score'] > defaults['score'] + 0.1, (fitted, defaults)
    assert fitted['start_f1'] > defaults['start_f1'], (fitted, defaults)
    assert fitted['edit_score'] >= 85 > defaults['edit_score'], (fitted, defaults)


def unsure_recording(seed: int) -> tuple[list[StreamRecord], Timeline, int]:
    """40 s of 'wave' and 'stir' (3 s each) with 'none' (2 s) between them, at 8 predictions
    per second from a 1 s window; a head that reads new recordings unsurely: the true label
    leads with about 0.4 of the probability, never 0.5."""
    rng = np.random.default_rng(seed)
    labels = ('none', 'stir', 'wave')
    segments, t = [], 0
    while t < 40 * S:
        action = 'wave' if (t // (5 * S)) % 2 else 'stir'
        segments += [Segment(t, t + 3 * S, action), Segment(t + 3 * S, t + 5 * S, 'none')]
        t += 5 * S
    timeline = Timeline(segments)
    records = []
    for i in range(8, 320):
        stamp = i * S // 8
        truth = timeline.label_at(stamp - S // 2)
        probs = np.full(3, 0.3) + rng.uniform(0.0, 0.02, 3)
        probs[labels.index(truth)] = 0.42
        records.append(StreamRecord(stamp_ns=stamp, window_start_ns=stamp - S, label='',
                                    probs=probs / probs.sum(), ambiguous=False))
    return records, timeline, records[-1].stamp_ns


def test_a_head_unsure_on_new_recordings_still_gets_a_stage_that_starts_actions():
    chosen, summary = fit([unsure_recording(seed) for seed in (0, 1)])
    fitted = summary['chosen']
    assert chosen.enter_threshold < 0.5, chosen
    assert fitted['start_f1'] >= 0.8 and fitted['edit_score'] >= 80, fitted
    # The defaults (enter 0.5) start nothing on these recordings.
    assert summary['defaults']['changes_ratio'] == 0.0, summary['defaults']


@pytest.fixture(scope='module')
def flow(tmp_path_factory):
    """The documented flow on the tiny backbone: three recordings to train, one to validate,
    one held out; T=4 over 1 s."""
    tmp = tmp_path_factory.mktemp('decision_fit')
    bags = [write_synth_bag(tmp / f'rec{i}', seconds=12.0, fps=8.0, size=(48, 64), seed=i,
                            action_seconds=2.0, progress=False)[0] for i in range(5)]
    head = make_head(tmp / 'random.safetensors', num_frames=4, labels=LABELS,
                     pairs=SYMMETRIC_PAIRS, background='none', window_seconds=1.0)
    node = {'backbone.weights': 'tiny', 'backbone.image_size': 0, 'device': 'cpu',
            'precision': 'fp32', 'num_frames': 4, 'window_seconds': 1.0, 'top_k': 3}
    params = write_params(tmp / 'extract.yaml', {**node, 'heads.checkpoints': [str(head)]})
    argv = []
    for bag, split in zip(bags[:4], ('train', 'train', 'train', 'val')):
        argv += ['--bag', str(bag), '--split', split]
    assert extract.main([*argv, '--topic', TOPIC, '--config', str(params), '--straddle',
                         'majority', '--out', str(tmp / 'cache')]) == 0
    return tmp, bags, node


def run_train(flow, out: str, *extra: str) -> int:
    tmp, _, _ = flow
    return train.main(['--cache', str(tmp / 'cache' / 'train'), '--val-cache',
                       str(tmp / 'cache' / 'val'), '--head', 'step', '--epochs', '3',
                       '--background', 'none', '--out', str(tmp / out), *extra])


def test_train_fits_the_decision_and_bag_eval_uses_it(flow, capsys):
    tmp, bags, node = flow
    assert run_train(flow, 'run') == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert 'decision fitted on 1 validation recording(s)' in printed, printed
    # Three epochs on 36 s of recordings: the head underfits, and train says so and why.
    final = [json.loads(line) for line in (tmp / 'run' / 'log.jsonl').read_text().splitlines()
             if json.loads(line).get('head', 'step') == 'step'][-1]
    assert final['train_acc'] < 0.9, final
    assert f"train: step: it fits only {final['train_acc']:.2f} of its own training" in printed, \
        printed
    checkpoint = tmp / 'run' / 'step.safetensors'
    meta = read_meta(checkpoint)
    fit = json.loads((tmp / 'run' / 'decision_fit.json').read_text())['step']
    assert meta.decision == fit['values'], (meta.decision, fit)
    assert meta.training['decision_fit']['recordings'] == 1
    # --reverse-pairs auto: on for a cache of recordings.
    assert json.loads((tmp / 'run' / 'config.json').read_text())['train']['reverse_pairs']
    assert fit['chosen']['score'] >= fit['defaults']['score'] or \
        fit['chosen']['changes_ratio'] <= MAX_CHANGES_RATIO, fit

    # bag-eval with a parameters file without decision.*: the fitted values, named as such.
    params = write_params(tmp / 'params.yaml', {**node, 'heads.checkpoints': [str(checkpoint)]})
    out = tmp / 'eval'
    assert bag_eval.main(['--bag', str(bags[4]), '--topic', TOPIC, '--config', str(params),
                          '--out', str(out), '--no-progress']) == 0
    report = json.loads((out / 'report.json').read_text())
    assert report['decision'] == {**vars(DecisionConfig()), **meta.decision}, report['decision']
    assert report['decision_source'].startswith('fitted by train on 1 validation'), report
    printed = capsys.readouterr().out
    assert 'bag-eval: decision parameters (fitted by train on 1 validation' in printed, \
        printed
    assert 'fitted by train' in (out / 'report.md').read_text()

    # The parameters file's decision.* wins over the fitted values.
    override = write_params(tmp / 'override.yaml', {**node, 'heads.checkpoints': [str(checkpoint)],
                                                    'decision.enter_threshold': 0.55})
    out = tmp / 'eval_override'
    assert bag_eval.main(['--bag', str(bags[4]), '--topic', TOPIC, '--config', str(override),
                          '--out', str(out), '--no-progress']) == 0
    report = json.loads((out / 'report.json').read_text())
    assert report['decision'] == {**vars(DecisionConfig()), 'enter_threshold': 0.55}, report
    assert report['decision_source'] == 'the parameters (decision.*)', report


def test_no_fit_decision_leaves_the_checkpoint_without(flow, capsys):
    tmp, _, node = flow
    assert run_train(flow, 'run_plain', '--no-fit-decision', '--reverse-pairs', 'off') == 0, \
        capsys.readouterr().err
    assert not json.loads((tmp / 'run_plain' / 'config.json').read_text())['train'][
        'reverse_pairs']
    checkpoint = tmp / 'run_plain' / 'step.safetensors'
    assert read_meta(checkpoint).decision is None
    assert not (tmp / 'run_plain' / 'decision_fit.json').exists()
    config = PerceptionConfig.from_params(
        load_params_file(write_params(tmp / 'plain.yaml',
                                      {**node, 'heads.checkpoints': [str(checkpoint)]})))
    decision, source = decision_for(config, read_meta(checkpoint), str(checkpoint))
    assert decision == DecisionConfig() and source.startswith('the defaults'), source


def test_a_checkpoint_with_invalid_fitted_values_is_named(tmp_path):
    head = make_head(tmp_path / 'head.safetensors', num_frames=4)
    meta = read_meta(head)
    params = write_params(tmp_path / 'p.yaml', {
        'backbone.weights': 'tiny', 'backbone.image_size': 0, 'device': 'cpu',
        'heads.checkpoints': [str(head)], 'num_frames': 4})
    config = PerceptionConfig.from_params(load_params_file(params))
    for bad, words in (({'enter_threshold': 1.5}, 'enter_threshold=1.5'),
                       ({'speed': 2.0}, "unknown ['speed']")):
        with pytest.raises(CheckpointError) as info:
            decision_for(config, replace(meta, decision=bad), 'h.safetensors')
        assert str(info.value).startswith('h.safetensors: fitted decision parameters: ') and \
            words in str(info.value), str(info.value)


def test_a_parameters_file_with_decision_keys_is_marked_set(tmp_path):
    head = make_head(tmp_path / 'head.safetensors', num_frames=4)
    base = {'backbone.weights': 'tiny', 'heads.checkpoints': [str(head)], 'num_frames': 4}
    plain = PerceptionConfig.from_params(base)
    assert not plain.decision_set
    assert PerceptionConfig.from_params({**base, 'decision.min_confidence': 0.3}).decision_set
    assert plain.retuned({'decision.min_confidence': 0.3}).decision_set
    assert not plain.retuned({'top_k': 2}).decision_set
    # A change applies to the given decision values (a head's fitted ones), checked with them.
    fitted = DecisionConfig(enter_threshold=0.8, exit_threshold=0.5)
    assert plain.retuned({'decision.exit_threshold': 0.7}, decision=fitted).decision == \
        DecisionConfig(enter_threshold=0.8, exit_threshold=0.7)


def test_reverse_pairs_auto_is_off_for_clips_and_the_flag_alone_turns_it_on():
    parser = train.build_parser()
    base = ['--cache', 'c', '--head', 'step', '--out', 'o']
    assert not train.train_config(parser.parse_args(base)).reverse_pairs
    assert train.train_config(parser.parse_args(base), recordings=True).reverse_pairs
    assert train.train_config(parser.parse_args([*base, '--reverse-pairs'])).reverse_pairs
    off = parser.parse_args([*base, '--reverse-pairs', 'off'])
    assert not train.train_config(off, recordings=True).reverse_pairs
