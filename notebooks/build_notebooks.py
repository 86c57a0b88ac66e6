"""Write the analyst notebooks (without outputs): ``python notebooks/build_notebooks.py``.

Edit the cells here, not in the .ipynb files, so that diffs stay reviewable. The first
code cell of every notebook is its parameters cell (tagged ``parameters``).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

HOME_PARAM = 'HOME = os.environ.get("SYNCGUARD_HOME", ".syncguard")  # the syncguard home\n'

EXPLORE = [
    new_markdown_cell(
        "# Explore a connector\n"
        "Each metric of one connector over time against what the model expects at that "
        "time of week, with the decisions syncguard took and the reasons of recent pauses.\n"
        "Run it against any home: `SYNCGUARD_HOME=/path/to/home` or set `HOME` below."
    ),
    new_code_cell(
        "import os\n\n"
        + HOME_PARAM
        + "CONNECTOR = None  # None: the connector with the most pauses (then most syncs)\n"
        "MAX_METRICS = 6  # metrics plotted: those that strayed furthest from expected\n"
        "N_PAUSES = 10  # most recent pauses listed\n"
        "USE_CHAMPION = True  # False: fit a fresh FleetModel on the store history",
        metadata={"tags": ["parameters"]},
    ),
    new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "import polars as pl\n\n"
        "from detector.home import resolve_home\n"
        "from detector.model import FleetModel\n"
        "from detector.scoring import load_scoring_model\n"
        "from detector.store import Store\n"
        "from training import analysis\n"
        "\n"
        "home = resolve_home(HOME)\n"
        "store = Store.open(home.store_path)\n"
        "connector = CONNECTOR or analysis.pick_connector(store)\n"
        "history = store.history(connector_ids=[connector])\n"
        "print(connector, history.height, 'syncs')"
    ),
    new_markdown_cell(
        "## The model\n"
        "The champion scoring uses (from the local verified copy), or a model fitted here on "
        "the whole history when there is no champion or `USE_CHAMPION` is False."
    ),
    new_code_cell(
        "if USE_CHAMPION:\n"
        "    try:\n"
        "        model, version = load_scoring_model(home)\n"
        "    except Exception as exc:  # no champion yet: fit one here\n"
        "        print(exc)\n"
        "        USE_CHAMPION = False\n"
        "if not USE_CHAMPION:\n"
        "    model, version = FleetModel().fit(store.history()), 'fitted in this notebook'\n"
        "print('model:', version)"
    ),
    new_markdown_cell(
        "## Metrics against their expected band\n"
        "Blue: observed. Dashed: the seasonal baseline (expected at that hour and weekday). "
        "Shaded: the usual range (99.7%). Red lines: pauses; orange: reviews.\n\n"
        "**What to do:** a metric that keeps leaving its band without a pause is either "
        "normal drift (retrain so the baseline learns it) or a fault the budget lets "
        "through (tighten the budget in *tune_and_backtest*). A pause whose metric sits "
        "inside the band was driven by a rule or another metric: read its reasons below."
    ),
    new_code_cell(
        "bands = analysis.metric_bands(model, history, connector)\n"
        "decisions = analysis.connector_decisions(store, connector)\n"
        "top = (bands.group_by('measure').agg(pl.col('z').abs().max())\n"
        "       .sort('z', descending=True).head(MAX_METRICS)['measure'].to_list())\n"
        "top"
    ),
    new_code_cell(
        "fig, axes = plt.subplots(len(top), 1, figsize=(11, 2.4 * len(top)), sharex=True,\n"
        "                         squeeze=False)\n"
        "marks = {'pause': 'tab:red', 'review': 'tab:orange'}\n"
        "for ax, measure in zip(axes[:, 0], top, strict=True):\n"
        "    m = bands.filter(pl.col('measure') == measure)\n"
        "    ax.fill_between(m['started_at'], m['range_lo'], m['range_hi'], alpha=0.25)\n"
        "    ax.plot(m['started_at'], m['expected'], '--', lw=1, color='grey')\n"
        "    ax.plot(m['started_at'], m['observed'], lw=1)\n"
        "    for decision, colour in marks.items():\n"
        "        for t in decisions.filter(pl.col('decision') == decision)['started_at']:\n"
        "            ax.axvline(t, color=colour, lw=1)\n"
        "    ax.set_title(measure, fontsize=9, loc='left')\n"
        "fig.suptitle(f'{connector}: observed, expected and usual range')\n"
        "plt.show()"
    ),
    new_markdown_cell(
        "## Scores and decisions\n"
        "Each scored sync's score (−log10 of its tail probability) against the cutoff its "
        "false-pause budget sets. Above the line: paused (or sent for review).\n\n"
        "**What to do:** scores that often approach the cutoff mean this connector will "
        "spend its budget; check its criticality and budget in the policy."
    ),
    new_code_cell(
        "fig, ax = plt.subplots(figsize=(11, 3))\n"
        "ax.plot(decisions['started_at'], decisions['score'], '.', ms=3, label='score')\n"
        "ax.plot(decisions['started_at'], decisions['cutoff'], color='tab:red', lw=1,\n"
        "        label='cutoff')\n"
        "flagged = decisions.filter(pl.col('decision') != 'proceed')\n"
        "ax.plot(flagged['started_at'], flagged['score'], 'x', color='tab:red',\n"
        "        label='pause/review')\n"
        "ax.set_ylabel('score')\n"
        "ax.legend(fontsize=8)\n"
        "plt.show()"
    ),
    new_markdown_cell(
        "## Most recent pauses (whole fleet)\n"
        "`reason` is the main reason; `reasons` lists every metric and rule behind it. "
        "Resume a pause with `syncguard resume CONNECTOR --by WHO --reason TEXT`; say "
        "whether it was a false positive so the next training leaves it in."
    ),
    new_code_cell(
        "with pl.Config(fmt_str_lengths=200, tbl_width_chars=200):\n"
        "    display(analysis.recent_pauses(store, limit=N_PAUSES))"
    ),
]

TUNE = [
    new_markdown_cell(
        "# Tune and backtest\n"
        "Change the false-pause budget and the model parameters, backtest on the held-out "
        "last days of history (fitted on the days before), compare with the fixed-threshold "
        "safeguards, and log the run to MLflow as a challenger."
    ),
    new_code_cell(
        "import os\n\n"
        + HOME_PARAM
        + "BUDGET_FALSE_PAUSES = 1  # false pauses allowed per connector ...\n"
        "BUDGET_DAYS = 365  # ... per this many days (product ceiling: 1 per 30 days)\n"
        "N_ESTIMATORS = 100  # trees per isolation forest\n"
        'BASELINE_METHOD = "profile"  # or "stl"\n'
        "HOLDOUT_DAYS = 14  # backtest window: the latest days of history\n"
        "LABELS_PATH = None  # simulator labels.jsonl; None: <home>/demo/labels.jsonl if present\n"
        "BUDGET_FACTORS = (0.25, 0.5, 1, 2, 4, 8, 16)  # budgets tried on the calibration plot\n"
        "LOG_TO_MLFLOW = True",
        metadata={"tags": ["parameters"]},
    ),
    new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "import polars as pl\n\n"
        "from detector.home import resolve_home\n"
        "from detector.policy import load_policy\n"
        "from training import analysis\n"
        "from training.backtest import run_backtest\n"
        "from training.pipeline import TrainConfig\n"
        "\n"
        "home = resolve_home(HOME).ensure()\n"
        "history, window, labels, frame = analysis.backtest_split(\n"
        "    home, holdout_days=HOLDOUT_DAYS, labels_path=LABELS_PATH)\n"
        "print(history.height, 'clean syncs to fit on,', window.height, 'held out;',\n"
        "      'labels:', 'none' if labels is None else labels.height)"
    ),
    new_markdown_cell(
        "## Budget and model\n"
        "The budget is written to a policy file in the home (every criticality gets it); "
        "the run's params record its path so *compare_and_promote* can rerun it."
    ),
    new_code_cell(
        "policy_path = analysis.write_budget_policy(\n"
        "    home.root / f'policy-{BUDGET_FALSE_PAUSES:g}-per-{BUDGET_DAYS:g}d.toml',\n"
        "    BUDGET_FALSE_PAUSES, BUDGET_DAYS)\n"
        "load_policy(policy_path)  # fails here on a bad budget\n"
        "config = TrainConfig(n_estimators=N_ESTIMATORS, baseline_method=BASELINE_METHOD,\n"
        "                     holdout_days=HOLDOUT_DAYS, policy_path=str(policy_path))\n"
        "report = run_backtest(history, window, labels=labels, model=config.model())\n"
        "report.timings"
    ),
    new_markdown_cell(
        "## Quality against the fixed-threshold safeguards\n"
        "Episode recall: share of fault episodes with at least one paused sync. False "
        "pauses per 1,000 normal syncs: what the on-call pays. The fixed rules are what "
        "Okta, Entra, ConductorOne, SailPoint and a 3-sigma z-score would have done on the "
        "same syncs.\n\n"
        "**What to do:** syncguard should sit top-left of the plot (high recall, few false "
        "pauses). Without labels there is no quality table; label pauses in the store."
    ),
    new_code_cell(
        "if report.quality is not None:\n"
        "    display(report.quality)\n"
        "    fig, ax = plt.subplots(figsize=(7, 4))\n"
        "    for row in report.quality.iter_rows(named=True):\n"
        "        ax.scatter(row['false_pauses_per_1000'], row['episode_recall'])\n"
        "        xy = (row['false_pauses_per_1000'], row['episode_recall'])\n"
        "        ax.annotate(row['method'], xy, fontsize=8)\n"
        "    ax.set_xlabel('false pauses per 1,000 normal syncs')\n"
        "    ax.set_ylabel('episode recall')\n"
        "    plt.show()"
    ),
    new_markdown_cell(
        "## Recall per fault class\n"
        "**What to do:** a class syncguard misses while a fixed rule catches it points to "
        "a measure the connector does not report, or a budget too tight for that fault."
    ),
    new_code_cell(
        "if report.per_class is not None:\n"
        "    display(report.per_class)\n"
        "    classes = report.per_class['class'].to_list()\n"
        "    fig, ax = plt.subplots(figsize=(9, 0.4 * len(classes) + 1.5))\n"
        "    ax.barh(classes, report.per_class['syncguard'].fill_null(0).to_list())\n"
        "    ax.set_xlabel('syncguard episode recall')\n"
        "    ax.set_xlim(0, 1)\n"
        "    plt.show()"
    ),
    new_markdown_cell(
        "## Calibration: budgeted false-pause rate against the model's breaches\n"
        "Each point is the budget times a factor (the big dot is the budget above): the "
        "rate of model breaches on normal held-out syncs that budget allows, against the "
        "rate that happened. On the diagonal: the budget is kept. A breach where only the "
        "connector's transport moved (latency, retried API errors) is a review, not a "
        "pause, so false pauses (`report.calibration['realised_rate']`) are at most the "
        "breaches drawn here.\n\n"
        "**What to do:** points well above the diagonal mean more false pauses than "
        "promised (do not promote; retrain on more history); well below means the budget "
        "is not spent, and a larger budget may buy recall at no real cost. With few normal "
        "syncs, a realised rate of 0 (not drawn on the log scale) is common."
    ),
    new_code_cell(
        "curve = analysis.calibration_curve(report, labels, window, factors=BUDGET_FACTORS)\n"
        "display(curve)\n"
        "fig, ax = plt.subplots(figsize=(5.5, 5))\n"
        "lo = max(float(curve['budgeted_rate'].min()) / 3, 1e-7)\n"
        "ax.loglog([lo, 1], [lo, 1], '--', color='grey', label='budget kept')\n"
        "seen = curve.filter(pl.col('breach_rate') > 0)\n"
        "ax.loglog(seen['budgeted_rate'], seen['breach_rate'], 'o-', label='breaches')\n"
        "c = report.calibration\n"
        "ax.loglog([c['budgeted_rate']], [max(c['breach_rate'], lo)], 'o', ms=10,\n"
        "          color='tab:red', label='this budget (0 drawn at the bottom)')\n"
        "ax.set_xlabel('budgeted false-pause rate per sync')\n"
        "ax.set_ylabel('realised breach rate on normal syncs')\n"
        "ax.legend(fontsize=8)\n"
        "calibration_fig = fig\n"
        "plt.show()"
    ),
    new_markdown_cell(
        "## Log the run to MLflow as a challenger\n"
        "Logs params, metrics and the calibration plot, fits the final model on all clean "
        "history and registers it **without** moving the champion alias. Compare and "
        "promote it in *compare_and_promote*."
    ),
    new_code_cell(
        "if LOG_TO_MLFLOW:\n"
        "    logged = analysis.log_challenger(home, config, report, frame,\n"
        "                                     figures={'calibration': calibration_fig})\n"
        "    print('run', logged['run_id'], '-> version', logged['version'])\n"
        "    print(logged['gate'])"
    ),
]

COMPARE = [
    new_markdown_cell(
        "# Compare runs and promote\n"
        "The registered versions and their MLflow runs side by side, the champion against a "
        "challenger on the same backtest, and promotion (off unless `PROMOTE = True`)."
    ),
    new_code_cell(
        "import os\n\n"
        + HOME_PARAM
        + "CHALLENGER = None  # version number; None: the newest version that is not champion\n"
        "HOLDOUT_DAYS = 14  # the backtest both models are judged on\n"
        "LABELS_PATH = None  # None: <home>/demo/labels.jsonl if present\n"
        "PROMOTE = False  # True: make the challenger champion (audited)\n"
        'ACTOR = ""  # who promotes (required to promote)\n'
        'REASON = ""  # why (required to promote)',
        metadata={"tags": ["parameters"]},
    ),
    new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "import polars as pl\n\n"
        "from detector.home import resolve_home\n"
        "from training import analysis, register\n"
        "from training.backtest import run_backtest\n"
        "\n"
        "home = resolve_home(HOME)\n"
        "versions = register.list_versions(home)\n"
        "pl.DataFrame([{**{k: v for k, v in r.items() if k != 'metrics'}, **r['metrics']}\n"
        "              for r in versions])"
    ),
    new_markdown_cell(
        "## MLflow runs side by side\n"
        "Every training run (CLI and notebooks) with its main params and backtest metrics. "
        "`syncguard.role = challenger` marks runs logged from *tune_and_backtest*."
    ),
    new_code_cell(
        "client = register.client_for(home)\n"
        "exp = client.get_experiment_by_name(register.EXPERIMENT_NAME)\n"
        "runs = client.search_runs([exp.experiment_id], order_by=['attributes.start_time DESC'])\n"
        "pl.DataFrame([{'run': r.info.run_name,\n"
        "               'role': r.data.tags.get('syncguard.role', 'train'),\n"
        "               **{k: r.data.params.get(k) for k in ('n_estimators', 'baseline_method',\n"
        "                                                    'policy_path')},\n"
        "               **{k: r.data.metrics.get(k) for k in register.KEY_METRICS}}\n"
        "              for r in runs])"
    ),
    new_markdown_cell(
        "## Champion against challenger on the same backtest\n"
        "Both configurations (from their runs' params) are fitted on the same history and "
        "judged on the same held-out syncs, so the difference is the model, not the data.\n\n"
        "**What to do:** promote when the challenger's recall is at least the champion's "
        "and its false pauses are not higher; the gate verdict below applies the product rule."
    ),
    new_code_cell(
        "champion = next(v for v in versions if register.CHAMPION_ALIAS in v['aliases'])\n"
        "challenger = CHALLENGER or next(\n"
        "    (v['version'] for v in versions if register.CHAMPION_ALIAS not in v['aliases']),\n"
        "    champion['version'])\n"
        "history, window, labels, frame = analysis.backtest_split(\n"
        "    home, holdout_days=HOLDOUT_DAYS, labels_path=LABELS_PATH)\n"
        "reports = {}\n"
        "for name, number in (('champion', champion['version']), ('challenger', challenger)):\n"
        "    params = register.show_version(home, number)['params']\n"
        "    config = analysis.config_from_params(params)\n"
        "    reports[f'{name} v{number}'] = run_backtest(history, window, labels=labels,\n"
        "                                                  model=config.model())\n"
        "list(reports)"
    ),
    new_code_cell(
        "rows = []\n"
        "for name, rep in reports.items():\n"
        "    q = [] if rep.quality is None else rep.quality.filter(pl.col('method') == 'syncguard')\n"
        "    rows.append({'model': name, **(q.drop('method').to_dicts()[0] if len(q) else {}),\n"
        "                 **rep.calibration})\n"
        "side_by_side = pl.DataFrame(rows)\n"
        "side_by_side"
    ),
    new_code_cell(
        "shown = [c for c in ('episode_recall', 'first_sync_recall', 'calibration_ratio')\n"
        "         if c in side_by_side.columns]\n"
        "fig, axes = plt.subplots(1, len(shown) + 1, figsize=(12, 3.2))\n"
        "for ax, col in zip(axes, [*shown, 'realised_rate'], strict=True):\n"
        "    ax.bar(side_by_side['model'], side_by_side[col].fill_null(0).to_list(),\n"
        "           color=['tab:blue', 'tab:orange'][: side_by_side.height])\n"
        "    ax.set_title(col, fontsize=9)\n"
        "    ax.tick_params(axis='x', labelsize=8)\n"
        "plt.show()"
    ),
    new_code_cell(
        "gate = register.is_at_least_as_good(\n"
        "    register.show_version(home, challenger)['metrics'],\n"
        "    register.show_version(home, champion['version'])['metrics'])\n"
        "print('gate:', 'passes' if gate else 'fails', '-', gate.reason)"
    ),
    new_markdown_cell(
        "## Promote\n"
        "Moves the champion alias to the challenger, refreshes the local copy scoring uses "
        "and writes the audit log, like `syncguard models promote`. A person's decision "
        "stands even when the gate fails; the verdict is recorded."
    ),
    new_code_cell(
        "if PROMOTE and challenger != champion['version']:\n"
        "    result = analysis.promote_version(home, challenger, actor=ACTOR, reason=REASON)\n"
        "    print(f\"v{result['version']} is champion (was v{result['previous']})\")\n"
        "    print(result['cache'])\n"
        "else:\n"
        '    print(f"not promoting v{challenger} (PROMOTE={PROMOTE}); champion stays "\n'
        "          f\"v{champion['version']}\")"
    ),
]

NOTEBOOKS = {
    "explore_connector.ipynb": EXPLORE,
    "tune_and_backtest.ipynb": TUNE,
    "compare_and_promote.ipynb": COMPARE,
}


def build() -> list[Path]:
    """Write every notebook beside this script; return their paths."""
    out = []
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(
            cells=cells,
            metadata={
                "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                "language_info": {"name": "python"},
            },
        )
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"{Path(name).stem.replace('_', '-')}-{i}"
        path = HERE / name
        nbformat.write(nb, path)
        out.append(path)
    return out


if __name__ == "__main__":
    for p in build():
        print(p)
