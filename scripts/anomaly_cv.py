#!/usr/bin/env python3
"""Cross-validated settings for the anomaly detector (crates/anomaly).

Every setting of a small, fixed grid is run once over all dev series by `anomaly-eval`; then, per
fold, the setting with the best score on the *other* folds is picked and its output for the
held-out fold is kept. The held-out outputs of all folds are put together into one directory and
scored by the shared `score.py`, exactly as a hidden set would be. The figure says how well the
whole procedure ("pick the best of this grid on the data you have") does on series it did not see.

Folds
  NAB       leave one category out (NAB's folders: realAWSCloudwatch, realTweets, ...).
  SMD, ASD  leave one machine out.
Selection (on the training folds only)
  NAB       the NAB standard score of the training categories (threshold swept over them).
  SMD, ASD  two stages: the score settings by macro point-F1 (F1best) of the training machines,
            then the alert settings (which do not change the score) on top of that choice by
            macro alert-F1 of the training machines.
Ties go to the earlier grid point; the first point of every grid is the current default.

Usage
  anomaly_cv.py --eval target/release/examples/anomaly-eval [--datasets smd,asd,nab]
                [--variant JSON] [--tag NAME] [--json out.json]
  --variant merges a JSON object of settings into every grid point (e.g. a candidate mechanism),
  so a candidate is judged by the same procedure as the default. Runs are cached under --work by
  (binary, settings), so repeated calls only run what changed.
"""
import argparse
import copy
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("RACKWATCH_SHARED", os.path.join(ROOT, "..", "shared"))

# ---------------------------------------------------------------------------------------- grids
# Each grid point is (name, overrides); overrides are merged into the detector's complete default
# settings (`anomaly-eval --print-defaults`). The points are the settings earlier rounds chose
# (the default) and their one-step neighbours along every setting those rounds tuned, plus the
# earlier defaults; nothing here was picked by looking at held-out folds.


def _s(**kw):
    return {"stream": kw}


def _d(**kw):
    return {"detector": kw}


NAB_GRID = [
    ("default", {}),
    # fire level x event floor (the two levels of the fused score)
    ("fire 0.999, floor 0.9985", _s(fire_level=0.999, dual_floor=0.9985)),
    ("fire 0.999, floor 0.999", _s(fire_level=0.999, dual_floor=0.999)),
    ("fire 0.999, floor 0.9993", _s(fire_level=0.999, dual_floor=0.9993)),
    ("fire 0.9995, floor 0.9985", _s(fire_level=0.9995, dual_floor=0.9985)),
    ("fire 0.9995, floor 0.9993", _s(fire_level=0.9995, dual_floor=0.9993)),
    ("fire 0.9997, floor 0.9985", _s(fire_level=0.9997, dual_floor=0.9985)),
    ("fire 0.9997, floor 0.999", _s(fire_level=0.9997, dual_floor=0.999)),
    ("fire 0.9997, floor 0.9993", _s(fire_level=0.9997, dual_floor=0.9993)),
    ("fire 0.9985, floor 0.997 (first fused setting)", _s(fire_level=0.9985, dual_floor=0.997)),
    # the detector without / with only the dual-vigilance events
    ("no events, fire 0.9985 (before the events)", _s(art_mode="off", fire_level=0.9985)),
    ("events alone", _s(art_mode="dual", suppress_frac=0.0)),
    # expanding-range margin
    ("margin 0.25", _s(dual={"margin": 0.25})),
    ("margin 1.0", _s(dual={"margin": 1.0})),
    # suppression after a fire
    ("suppression 0.1", _s(suppress_frac=0.1)),
    ("suppression 0.3", _s(suppress_frac=0.3)),
    # seasonal difference
    ("season acf 0.6", _s(season_min_acf=0.6)),
    ("season acf 0.8", _s(season_min_acf=0.8)),
    ("no seasonal difference", _s(season_min_acf=0.0)),
    # level-shift windows
    ("level windows 3/150", _s(level_short=3, level_long=150)),
    ("level windows 10/600", _s(level_short=10, level_long=600)),
    # window model (VAE or AR predictor) length
    ("window model lags 3", _s(detector={"lags": 3})),
    ("window model lags 12", _s(detector={"lags": 12})),
    # event detector's scale
    ("dual window 6", _s(dual={"window": 6})),
    ("dual 16 windows per probation", _s(dual={"windows_per_probation": 16})),
]

def _mv_score_grid():
    """The score's time scale (EMA span) and sensitivity floor (residual floor), each at half /
    the default / double, and the model blend (univariate weight: the joint model alone, the
    mean, the univariate models alone), as a factorial (27 points); then the predictor's lags,
    ridge and the residual clip one step from the default."""
    grid = []
    for ema in (12.0, 6.0, 24.0):
        for floor in (0.2, 0.1, 0.4):
            for uni in (0.5, 0.0, 1.0):
                name = f"EMA span {ema:g}, residual floor {floor:g}, univariate weight {uni:g}"
                grid.append((name, _d(ema_span=ema, resid_floor=floor, univariate_weight=uni)))
    grid += [
        ("lags 6", _d(lags=6)),
        ("ridge 100", _d(ridge=100.0)),
        ("clip 10", _d(clip=10.0)),
    ]
    return grid


MV_SCORE_GRID = _mv_score_grid()

MV_ALERT_GRID = [
    ("default", {}),
    ("POT risk 0.01", _d(pot_risk=0.01)),
    ("POT risk 0.02", _d(pot_risk=0.02)),
    ("POT risk 0.1", _d(pot_risk=0.1)),
    ("no drift guard", _d(adapt_factor=0.0)),
    ("drift guard 3x", _d(adapt_factor=3.0)),
    ("drift guard 8x", _d(adapt_factor=8.0)),
    ("drift guard window 2880", _d(adapt_window=2880)),
    ("POT on a held-out 20 % tail", _d(calib_frac=0.2)),
]

GRIDS = {
    "NAB": {"score": NAB_GRID},
    "SMD": {"score": MV_SCORE_GRID, "alert": MV_ALERT_GRID},
    "ASD": {"score": MV_SCORE_GRID, "alert": MV_ALERT_GRID},
}


# ---------------------------------------------------------------------------------------- helpers
def merge(base, over):
    """Deep merge of JSON objects (over wins)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_scorer(path):
    spec = importlib.util.spec_from_file_location("anomaly_score", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def argmax_first(values):
    best, bi = None, 0
    for i, v in enumerate(values):
        if best is None or v > best + 1e-12:
            best, bi = v, i
    return bi


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


class Runner:
    """Runs `anomaly-eval` for one dataset and one complete settings object, cached on disk."""

    def __init__(self, binary, data, work, defaults, log):
        self.binary, self.data, self.work, self.defaults, self.log = binary, data, work, defaults, log
        h = hashlib.sha1()
        with open(binary, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        self.bin_id = h.hexdigest()[:10]
        self.seconds = 0.0
        self.runs = 0

    def run(self, ds, opts):
        blob = json.dumps(opts, sort_keys=True)
        key = hashlib.sha1(blob.encode()).hexdigest()[:12]
        out = os.path.join(self.work, self.bin_id, ds, key)
        if os.path.exists(os.path.join(out, ".done")):
            return out
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        env = dict(os.environ, RW_ANOMALY_OPTS=blob)
        t0 = time.time()
        cmd = [self.binary, "--dataset", ds.lower(), "--data", os.path.join(self.data, ds), "--out", out]
        if os.environ.get("RW_CV_NICE", "1") != "0":
            cmd = ["nice", "-n", "15"] + cmd
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"anomaly-eval failed for {ds} {blob}:\n{p.stderr}")
        self.seconds += time.time() - t0
        self.runs += 1
        with open(os.path.join(out, "opts.json"), "w") as f:
            f.write(blob)
        with open(os.path.join(out, "summary.txt"), "w") as f:
            f.write(p.stdout)
        open(os.path.join(out, ".done"), "w").close()
        self.log(f"  ran {ds} {key} in {time.time() - t0:.1f} s: {p.stdout.strip()}")
        return out


# ---------------------------------------------------------------------------------------- CV
def prepare(grid, defaults, variant):
    """Complete settings for every grid point: the defaults, the variant, the point. The point
    equal to the (variant's) defaults is marked and moved first, so ties go to it."""
    base = merge(defaults, variant)
    pts = []
    for name, over in grid:
        o = merge(base, over)
        if o == base:
            if any(p[1] == base for p in pts):
                continue
            name = "default" if name == "default" else f"{name} (= default)"
        pts.append((name, o))
    if not any(o == base for _, o in pts):
        pts.insert(0, ("default", base))
    pts.sort(key=lambda p: p[1] != base)
    return pts


def cv_multivariate(datasets, runner, sc, labels, grids, variant, cv_root, log):
    """Leave one machine out over the machines of all `datasets` together (SMD and ASD: one
    setting for every host, as in the product). A setting's training figure is the mean over the
    datasets of the macro average over their training machines. Two stages (score settings by
    point-F1, then alert settings by alert-F1). Returns {ds: report}."""
    score_pts = prepare(grids["score"], runner.defaults, variant)
    cache = {}

    def per_series(ds, opts):
        key = (ds, json.dumps(opts, sort_keys=True))
        if key not in cache:
            d = runner.run(ds, opts)
            cache[key] = (d, sc.evaluate(ds, d, labels, per_series=True, nab=False)["per_series"])
        return cache[key]

    def pooled(opts, metric, exclude):
        vals = []
        for ds in datasets:
            per = per_series(ds, opts)[1]
            vals.append(mean(v[metric] for m, v in per.items() if (ds, m) != exclude))
        return mean(vals)

    units = [(ds, m) for ds in datasets for m in sorted(per_series(ds, score_pts[0][1])[1])]
    for _, o in score_pts:
        for ds in datasets:
            per_series(ds, o)
    folds = {ds: [] for ds in datasets}
    for ds, m in units:
        f1s = [pooled(o, "f1_best", (ds, m)) for _, o in score_pts]
        si = argmax_first(f1s)
        alert_pts = [(n, merge(score_pts[si][1], o)) for n, o in grids["alert"]]
        afs = [pooled(o, "alert_f1", (ds, m)) for _, o in alert_pts]
        ai = argmax_first(afs)
        src, per = per_series(ds, alert_pts[ai][1])
        dst = os.path.join(cv_root, ds)
        os.makedirs(dst, exist_ok=True)
        shutil.copy(os.path.join(src, m + ".csv"), os.path.join(dst, m + ".csv"))
        held = per[m]
        folds[ds].append({
            "held_out": m, "score_setting": score_pts[si][0], "alert_setting": alert_pts[ai][0],
            "train_f1": f1s[si], "train_alert_f1": afs[ai],
            "held_out_f1": held["f1_best"], "held_out_alert_f1": held["alert_f1"],
        })
        log(f"  {ds} fold {m}: score '{score_pts[si][0]}' (train F1 {f1s[si]:.4f}), "
            f"alert '{alert_pts[ai][0]}' (train alert-F1 {afs[ai]:.4f}); held out F1 "
            f"{held['f1_best']:.4f}, alert-F1 {held['alert_f1']:.4f}")
    out = {}
    default_alert_pts = [(n, merge(score_pts[0][1], o)) for n, o in grids["alert"]]
    for ds in datasets:
        per0 = per_series(ds, score_pts[0][1])[1]
        insample = {k: mean(v[k] for v in per0.values()) for k in ("f1_best", "pr_auc", "alert_f1")}
        allf1 = {n: mean(v["f1_best"] for v in per_series(ds, o)[1].values()) for n, o in score_pts}
        allaf = {n: mean(v["alert_f1"] for v in per_series(ds, o)[1].values()) for n, o in default_alert_pts}
        bf, ba = max(allf1, key=allf1.get), max(allaf, key=allaf.get)
        out[ds] = {
            "folds": folds[ds],
            "insample_default": insample,
            "insample_best_score_setting": {"name": bf, "f1_best": allf1[bf]},
            "insample_best_alert_setting": {"name": ba, "alert_f1": allaf[ba]},
            "grid_f1_all": allf1,
            "grid_alert_f1_all": allaf,
            "default_dir": per_series(ds, score_pts[0][1])[0],
            "train_seconds": train_seconds(per_series(ds, score_pts[0][1])[0]),
        }
    return out


def train_seconds(run_dir):
    txt = open(os.path.join(run_dir, "summary.txt")).read()
    i = txt.find("rows in ")
    try:
        return float(txt[i + 8:].split(" s", 1)[0]) if "trained on" in txt else None
    except ValueError:
        return None


def cv_nab(runner, sc, labels, grid, variant, cv_dir, log):
    import numpy as np  # noqa: F401  (score.py needs it; fail early with a clear message)
    import pandas as pd

    pts = prepare(grid["score"], runner.defaults, variant)
    opts = [o for _, o in pts]
    names = sc.discover(labels, "NAB")
    windows = json.load(open(os.path.join(labels, "NAB", "labels", "combined_windows.json")))
    geo = {}
    for n in names:
        series = pd.read_csv(sc._existing(os.path.join(labels, "NAB", "series", n)))
        geo[n] = sc.nab_geometry(series["timestamp"], windows[n + ".csv"])
    cats = sorted({n.split("/")[0] for n in names})
    dirs, scores = [], []
    for o in opts:
        d = runner.run("NAB", o)
        dirs.append(d)
        scores.append({n: sc.read_scores(sc._existing(os.path.join(d, n)))[0] for n in names})

    def nab(i, subset):
        return sc.nab_score([(geo[n], scores[i][n]) for n in subset])["standard"]["score"]

    folds = []
    for c in cats:
        train = [n for n in names if not n.startswith(c + "/")]
        test = [n for n in names if n.startswith(c + "/")]
        s = [nab(i, train) for i in range(len(opts))]
        bi = argmax_first(s)
        for n in test:
            dst = os.path.join(cv_dir, n + ".csv")
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy(sc._existing(os.path.join(dirs[bi], n)), dst)
        has_windows = any(geo[n]["n_windows"] for n in test)
        held = nab(bi, test) if has_windows else None
        held_default = nab(0, test) if has_windows else None
        folds.append({"held_out": c, "setting": pts[bi][0], "train_score": s[bi],
                      "train_score_default": s[0],
                      "held_out_score_own_threshold": held, "held_out_default_own_threshold": held_default})
        log(f"  NAB fold {c}: '{grid['score'][bi][0]}' (train {s[bi]:.2f}, default {s[0]:.2f}); held out "
            f"{'-' if held is None else f'{held:.2f}'} (default {'-' if held_default is None else f'{held_default:.2f}'}, "
            "each with its own threshold)")
    allsc = [nab(i, names) for i in range(len(opts))]
    best = argmax_first(allsc)
    return {
        "folds": folds,
        "insample_default": {"nab_standard": allsc[0]},
        "insample_best_score_setting": {"name": pts[best][0], "nab_standard": allsc[best]},
        "grid_all": {pts[i][0]: allsc[i] for i in range(len(allsc))},
        "default_dir": dirs[0],
    }


def score_cli(python, scorer, ds, scores_dir, labels, json_out):
    cmd = [python, scorer, "--dataset", ds, "--scores", scores_dir, "--labels-dir", labels, "--json", json_out]
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return p.stdout.strip(), json.load(open(json_out))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval", required=True, help="anomaly-eval binary")
    ap.add_argument("--data", default=os.path.join(SHARED, "data", "anomaly"))
    ap.add_argument("--scorer", default=os.path.join(SHARED, "eval", "anomaly", "score.py"))
    ap.add_argument("--work", default=os.path.join(ROOT, "target", "anomaly-cv"))
    ap.add_argument("--datasets", default="smd,asd,nab")
    ap.add_argument("--variant", default="{}", help="JSON settings merged into every grid point")
    ap.add_argument("--extra", default="{}",
                    help='JSON {"mv": [[name, settings], ...], "nab": [...]}: grid points added for a '
                         'variant (e.g. its own settings), merged like the others')
    ap.add_argument("--tag", default="base", help="name of this run (output folder)")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)

    def log(msg):
        if not a.quiet:
            print(msg, file=sys.stderr, flush=True)

    sc = load_scorer(a.scorer)
    labels = os.path.abspath(a.data)
    defaults = json.loads(subprocess.run([a.eval, "--print-defaults"], capture_output=True, text=True,
                                         check=True).stdout)
    variant = json.loads(a.variant)
    extra = json.loads(a.extra)
    for k, v in extra.items():
        grids = {"mv": [GRIDS["SMD"], GRIDS["ASD"]], "nab": [GRIDS["NAB"]]}[k]
        for g in grids:
            g["score"] = g["score"] + [tuple(p) for p in v]
    runner = Runner(os.path.abspath(a.eval), labels, a.work, defaults, log)
    out_root = os.path.join(a.work, "cv", a.tag)
    shutil.rmtree(out_root, ignore_errors=True)
    report = {"variant": variant, "extra": extra, "tag": a.tag, "datasets": {}}
    t0 = time.time()
    lines = []
    wanted = [x.strip().upper() for x in a.datasets.split(",") if x.strip()]
    mv = [ds for ds in ("SMD", "ASD") if ds in wanted]
    results = {}
    if mv:
        log(f"{'+'.join(mv)}: cross-validating {len(GRIDS['SMD']['score'])} score and "
            f"{len(GRIDS['SMD']['alert'])} alert settings, one machine out at a time")
        results.update(cv_multivariate(mv, runner, sc, labels, GRIDS["SMD"], variant, out_root, log))
    if "NAB" in wanted:
        log(f"NAB: cross-validating {len(GRIDS['NAB']['score'])} settings, one category out at a time")
        results["NAB"] = cv_nab(runner, sc, labels, GRIDS["NAB"], variant, os.path.join(out_root, "NAB"), log)
    for ds in [d for d in ("SMD", "ASD", "NAB") if d in results]:
        r = results[ds]
        cv_dir = os.path.join(out_root, ds)
        text, js = score_cli(sys.executable, a.scorer, ds, cv_dir, labels, os.path.join(out_root, ds + ".json"))
        r["cv_scorer_output"] = text
        if ds == "NAB":
            ns = js["nab_score"]["standard"]
            r["cv"] = {"nab_standard": ns["score"], "windows_detected": ns["windows_detected"],
                       "fp_rows": ns["fp_rows"], "low_fp": js["nab_score"]["reward_low_FP_rate"]["score"],
                       "low_fn": js["nab_score"]["reward_low_FN_rate"]["score"]}
            lines.append(f"NAB standard: in-sample (default, 35 files) {r['insample_default']['nab_standard']:.2f}, "
                         f"best grid point in-sample {r['insample_best_score_setting']['nab_standard']:.2f} "
                         f"('{r['insample_best_score_setting']['name']}'), "
                         f"cross-validated (leave one category out) {ns['score']:.2f} "
                         f"({ns['windows_detected']}/{ns['windows']} windows, {ns['fp_rows']} FP rows)")
        else:
            m = js["macro"]
            r["cv"] = {"f1_best": m["f1_best"], "pr_auc": m["pr_auc"], "alert_f1": m["alert_f1"],
                       "alert_rate": m["alert_rate"]}
            ins = r["insample_default"]
            lines.append(f"{ds} point-F1: in-sample {ins['f1_best']:.4f}, cross-validated {m['f1_best']:.4f}; "
                         f"PR-AUC {ins['pr_auc']:.4f} / {m['pr_auc']:.4f}; alert-F1 {ins['alert_f1']:.4f} / "
                         f"{m['alert_f1']:.4f} (one machine out of {'+'.join(mv)})")
        report["datasets"][ds] = r
        log(text)
    report["seconds"] = time.time() - t0
    report["anomaly_eval_runs"] = runner.runs
    print("\n".join(lines))
    d = report["datasets"]
    kv = []
    if "NAB" in d:
        kv.append(f"nab_cv={d['NAB']['cv']['nab_standard']:.2f}")
    for ds in ("SMD", "ASD"):
        if ds in d:
            kv.append(f"{ds.lower()}_cv_f1={d[ds]['cv']['f1_best']:.4f}")
    for ds in ("SMD", "ASD"):
        if ds in d:
            kv.append(f"{ds.lower()}_cv_alert_f1={d[ds]['cv']['alert_f1']:.4f}")
    print("CV " + " ".join(kv))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1, default=float)
    log(f"{runner.runs} anomaly-eval runs, {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
