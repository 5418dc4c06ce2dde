//! The agent pointed at the NVML test double (`tests/nvml-double`, a cdylib exporting the
//! NVML C functions) and at a kernel-log file, shipping through the real server into
//! Postgres. The double's state is process-global, so every NVML check lives in one test.

use std::ffi::{c_char, c_int, c_ulonglong, CString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rackwatch::collect::agent::{self, Timing};
use rackwatch::collect::kernel_log::{KernelLogSource, XidLedger};
use rackwatch::collect::nvml::NvmlSource;
use rackwatch::collect::Source;
use rackwatch::model::HostInfo;
use sqlx::Row;
use tokio::sync::watch;

use crate::support::TestApp;

/// `libnvml_double.so` next to this test binary's profile dir (respects
/// CARGO_TARGET_DIR). Cargo cannot depend on a cdylib, so it is (re)built here; a no-op
/// when `scripts/test` already built it.
fn double_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/it-HASH
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let so = profile_dir.join("libnvml_double.so");
    let target_dir = profile_dir.parent().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "nvml-double"])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let built = cmd.status().map(|s| s.success()).unwrap_or(false);
    assert!(
        so.exists(),
        "{} missing (cargo build -p nvml-double {})",
        so.display(),
        if built { "succeeded" } else { "failed" }
    );
    so
}

/// The double's inspection functions, from the same loaded library nvml-wrapper uses.
struct Double {
    load: unsafe extern "C" fn(*const c_char) -> c_int,
    calls: unsafe extern "C" fn(*const c_char) -> c_ulonglong,
}

impl Double {
    fn open(path: &Path) -> Double {
        let p = CString::new(path.to_str().unwrap()).unwrap();
        unsafe {
            let h = libc::dlopen(p.as_ptr(), libc::RTLD_NOW);
            assert!(!h.is_null(), "dlopen {}", path.display());
            let sym = |name: &str| {
                let n = CString::new(name).unwrap();
                let s = libc::dlsym(h, n.as_ptr());
                assert!(!s.is_null(), "{name} missing");
                s
            };
            Double {
                load: std::mem::transmute::<
                    *mut libc::c_void,
                    unsafe extern "C" fn(*const c_char) -> c_int,
                >(sym("nvml_double_load")),
                calls: std::mem::transmute::<
                    *mut libc::c_void,
                    unsafe extern "C" fn(*const c_char) -> c_ulonglong,
                >(sym("nvml_double_calls")),
            }
        }
    }
    fn load(&self, scenario: &Path) {
        let p = CString::new(scenario.to_str().unwrap()).unwrap();
        assert_eq!(
            unsafe { (self.load)(p.as_ptr()) },
            0,
            "loading the scenario"
        );
    }
    fn calls(&self, name: &str) -> u64 {
        let n = CString::new(name).unwrap();
        unsafe { (self.calls)(n.as_ptr()) }
    }
}

const STEPS: usize = 9;

/// Three GPUs. GPU 0 has every field and every fault; GPU 1 lacks some functions and
/// is lost at step 3; GPU 2 is MIG-enabled and vanishes from the device list at step 5.
fn scenario() -> serde_json::Value {
    serde_json::json!({
        "driver_version": "550.54.15",
        "device_count": [3, 3, 3, 3, 3, 2],
        "devices": [
            {
                "name": "NVIDIA H100 80GB HBM3",
                "uuid": "GPU-11111111-2222-3333-4444-000000000000",
                "pci_bus_id": "00000000:3B:00.0",
                "steps": [
                    {
                        "util_gpu": 50, "util_mem": 20,
                        "mem_total": 85_899_345_920u64, "mem_used": 10_737_418_240u64,
                        "power_mw": 300_500, "power_limit_mw": 700_000,
                        "energy_mj": 1_000_000, "temp_gpu": 61, "mem_temp": 70,
                        "clock_sm": 1980, "clock_mem": 2619, "fan_pct": 40,
                        "pcie_rx_kbs": 1000, "pcie_tx_kbs": 2000, "pcie_replay": 3,
                        "throttle": 0, "ecc_sbe_agg": 5, "ecc_dbe_agg": 0,
                        "retired_sbe": 1, "retired_dbe": 0, "retired_pending": false,
                        "remapped_cor": 1, "remapped_unc": 0,
                        "remapped_pending": false, "remapped_failure": false,
                        "mig_current": 0
                    },
                    {"util_gpu": 55, "energy_mj": 1_300_000},
                    {"energy_mj": 1_600_000, "ecc_dbe_agg": 2, "throttle": 64, "remapped_pending": true, "remapped_unc": 1},
                    // Driver reload: the energy counter starts over.
                    {"energy_mj": 20_000, "remapped_failure": true},
                    {"energy_mj": 320_000, "throttle": 192},
                    {"energy_mj": 620_000, "throttle": 0},
                    {"energy_mj": 920_000}
                ]
            },
            {
                "name": "NVIDIA A100-SXM4-40GB",
                "uuid": "GPU-aaaaaaaa-2222-3333-4444-000000000001",
                "pci_bus_id": "00000000:3C:00.0",
                "unsupported": ["nvmlDeviceGetFanSpeed_v2", "nvmlDeviceGetPcieReplayCounter", "field:82"],
                "lost_at_step": 3,
                "steps": [{
                    "util_gpu": 10, "util_mem": 5, "mem_total": 42_949_672_960u64, "mem_used": 1_073_741_824u64,
                    "power_mw": 90_000, "power_limit_mw": 400_000, "energy_mj": 5_000_000,
                    "temp_gpu": 40, "clock_sm": 1410, "clock_mem": 1215, "pcie_rx_kbs": 10,
                    "pcie_tx_kbs": 20, "throttle": 1, "ecc_sbe_agg": 0, "ecc_dbe_agg": 0,
                    "mig_current": 0
                }, {"energy_mj": 5_090_000}]
            },
            {
                "name": "NVIDIA H100 80GB HBM3",
                "uuid": "GPU-cccccccc-2222-3333-4444-000000000002",
                "pci_bus_id": "00000000:3D:00.0",
                // A driver hiccup: one round where every call fails. No GPU is lost.
                "unknown_steps": [1],
                // It cannot register for XID events: the other GPUs' still come (the
                // wrapper's own call freed the shared event set on any refusal).
                "unsupported": ["nvmlDeviceRegisterEvents"],
                "steps": [{
                    "util_gpu": 99, "util_mem": 99, "mem_total": 85_899_345_920u64, "mem_used": 0,
                    "power_mw": 200_000, "power_limit_mw": 700_000, "energy_mj": 7_000_000,
                    "temp_gpu": 50, "clock_sm": 1755, "clock_mem": 2619, "fan_pct": 30,
                    "mig_current": 1, "mig_pending": 1
                }, {"energy_mj": 7_200_000}]
            }
        ],
        "xids": [
            {"step": 1, "device": 0, "code": 13, "repeat": 3},
            {"step": 2, "device": 1, "code": 48}
        ]
    })
}

#[tokio::test]
async fn the_agent_reports_every_nvml_field_and_fault_through_the_server() {
    let so = double_path();
    let double = Double::open(&so);
    let dir = tempfile::tempdir().unwrap();
    let scenario_path = dir.path().join("scenario.json");
    std::fs::write(&scenario_path, scenario().to_string()).unwrap();
    double.load(&scenario_path);

    let app = TestApp::spawn().await;
    let token = app.token("gpu-node-1").await;
    let kern = dir.path().join("kern.log");
    std::fs::write(&kern, "").unwrap();
    let ledger = XidLedger::shared();
    let nvml = NvmlSource::open_with(so.to_str().unwrap(), ledger.clone()).expect("NVML double");
    let klog = KernelLogSource::open(kern.to_str().unwrap(), ledger)
        .unwrap()
        .expect("kernel log");
    // The kernel log holds the same XID 13 burst NVML reports (de-duplicated), an XID
    // 79 NVML cannot see, on GPU 1, and a GSP timeout on GPU 0; plus noise.
    std::fs::write(
        &kern,
        "[ 100.000001] NVRM: GPU at PCI:0000:3b:00: GPU-11111111-2222-3333-4444-000000000000\n\
         [ 100.100000] NVRM: Xid (PCI:0000:3b:00): 13, pid=4242, name=python3, Graphics SM Warp Exception on (GPC 1, TPC 2, SM 0): Out Of Range Address\n\
         [ 100.100001] NVRM: Xid (PCI:0000:3b:00): 13, pid=4242, name=python3, Graphics Exception: ESR 0x51a730=0x4\n\
         [ 100.100002] NVRM: Xid (PCI:0000:3b:00): 13, pid=4242, name=python3, Graphics Exception: ESR 0x51a734=0x0\n\
         [ 101.000000] NVRM: Xid (PCI:0000:3c:00): 79, pid=0, name=kworker, GPU has fallen off the bus.\n\
         [ 101.500000] NVRM: Xid (PCI:0000:3b:00): 119, pid='N/A', name=N/A, Timeout after 6s of waiting for RPC response from GPU0 GSP!\n\
         [ 102.000000] usb 1-1: new high-speed USB device number 2\n",
    )
    .unwrap();

    let spool = tempfile::tempdir().unwrap();
    let shipper = rackwatch::app::shipper(&app.cfg, &app.base, &token, spool.path()).unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let identity = HostInfo {
        name: "gpu-node-1".into(),
        ..Default::default()
    };
    let sources: Vec<Box<dyn Source>> = vec![Box::new(nvml), Box::new(klog)];
    let agent = tokio::spawn(agent::run(
        identity,
        sources,
        shipper,
        Timing {
            interval: Duration::from_millis(100),
            ship_interval: Duration::from_millis(200),
        },
        stop_rx,
    ));
    // Wait for STEPS rounds of GPU 0 to be stored.
    let pool = app.store.pool.clone();
    let gpu0_rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM gpu_samples WHERE gpu_index = 0")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while gpu0_rows().await < STEPS as i64 {
        assert!(std::time::Instant::now() < deadline, "agent too slow");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).unwrap();
    let shipper = agent.await.unwrap().unwrap();
    assert!(!shipper.pending());

    // ---- every field, with the scenario's values --------------------------------
    let rows = sqlx::query("SELECT * FROM gpu_samples WHERE gpu_index = 0 ORDER BY ts")
        .fetch_all(&pool)
        .await
        .unwrap();
    let r = &rows[0];
    let f32c = |name: &str| r.get::<Option<f32>, _>(name);
    let i64c = |name: &str| r.get::<Option<i64>, _>(name);
    let f64c = |name: &str| r.get::<Option<f64>, _>(name);
    let boolc = |name: &str| r.get::<Option<bool>, _>(name);
    assert_eq!(f32c("util_pct"), Some(50.0));
    assert_eq!(f32c("mem_util_pct"), Some(20.0));
    assert_eq!(i64c("mem_total_bytes"), Some(85_899_345_920));
    assert_eq!(i64c("mem_used_bytes"), Some(10_737_418_240));
    assert_eq!(f32c("power_watts"), Some(300.5));
    assert_eq!(f32c("power_limit_watts"), Some(700.0));
    assert_eq!(f64c("energy_joules_total"), Some(1000.0));
    assert_eq!(f64c("energy_joules"), None, "no delta on the first reading");
    assert_eq!(f32c("temp_celsius"), Some(61.0));
    assert_eq!(f32c("mem_temp_celsius"), Some(70.0));
    assert_eq!(f32c("sm_clock_mhz"), Some(1980.0));
    assert_eq!(f32c("mem_clock_mhz"), Some(2619.0));
    assert_eq!(f32c("fan_pct"), Some(40.0));
    assert_eq!(f64c("pcie_rx_bytes_per_s"), Some(1000.0 * 1024.0));
    assert_eq!(f64c("pcie_tx_bytes_per_s"), Some(2000.0 * 1024.0));
    assert_eq!(i64c("pcie_replay_total"), Some(3));
    assert_eq!(i64c("throttle_reasons"), Some(0));
    assert_eq!(i64c("ecc_sbe_total"), Some(5));
    assert_eq!(i64c("ecc_dbe_total"), Some(0));
    assert_eq!(i64c("retired_pages_sbe"), Some(1));
    assert_eq!(i64c("retired_pages_dbe"), Some(0));
    assert_eq!(boolc("retired_pages_pending"), Some(false));
    assert_eq!(i64c("remapped_rows_correctable"), Some(1));
    assert_eq!(i64c("remapped_rows_uncorrectable"), Some(0));
    assert_eq!(boolc("remapped_rows_pending"), Some(false));
    assert_eq!(boolc("remapped_rows_failure"), Some(false));
    assert_eq!(boolc("mig_enabled"), Some(false));
    // Values over time: row k is step k.
    assert_eq!(rows[1].get::<Option<f32>, _>("util_pct"), Some(55.0));
    assert_eq!(rows[2].get::<Option<i64>, _>("throttle_reasons"), Some(64));
    assert_eq!(
        rows[2].get::<Option<bool>, _>("remapped_rows_pending"),
        Some(true)
    );
    assert_eq!(
        rows[3].get::<Option<bool>, _>("remapped_rows_failure"),
        Some(true)
    );

    // ---- energy: deltas, reset-safe ------------------------------------------------
    let energy: Vec<Option<f64>> = rows.iter().map(|r| r.get("energy_joules")).collect();
    assert_eq!(
        &energy[..7],
        &[
            None,
            Some(300.0),
            Some(300.0),
            Some(20.0),
            Some(300.0),
            Some(300.0),
            Some(300.0)
        ],
        "energy deltas across the counter reset at step 3"
    );
    assert!(energy[7..].iter().all(|e| *e == Some(0.0)));

    // ---- a lost GPU does not stop the others ------------------------------------------
    let per_gpu: Vec<(i16, i64)> =
        sqlx::query_as("SELECT gpu_index, count(*) FROM gpu_samples GROUP BY 1 ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(per_gpu[0].0, 0);
    assert!(per_gpu[0].1 >= STEPS as i64);
    assert_eq!(per_gpu[1], (1, 3), "GPU 1 reports steps 0-2, then is lost");
    assert_eq!(
        per_gpu[2],
        (2, 4),
        "GPU 2 reports steps 0-4 but 1 (a driver hiccup), then leaves the list"
    );

    // ---- GPU 1: unsupported functions asked once, missing values are NULL ----------
    assert_eq!(double.calls("nvmlDeviceGetFanSpeed_v2#1"), 1);
    assert_eq!(double.calls("nvmlDeviceGetPcieReplayCounter#1"), 1);
    assert_eq!(double.calls("field:82#1"), 1);
    // Values NVML has no answer for (absent from GPU 1's scenario) are asked once too.
    assert_eq!(double.calls("field:142#1"), 1);
    assert!(double.calls("nvmlDeviceGetFanSpeed_v2#0") >= STEPS as u64);
    let g1: (Option<f32>, Option<i64>, Option<f32>, Option<f32>) = sqlx::query_as(
        "SELECT fan_pct, pcie_replay_total, mem_temp_celsius, util_pct FROM gpu_samples WHERE gpu_index = 1 ORDER BY ts LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(g1, (None, None, None, Some(10.0)));

    // ---- MIG: no utilization asked, energy on the board only, one row per GPU ------
    assert_eq!(double.calls("nvmlDeviceGetUtilizationRates#2"), 0);
    let g2: (Option<f32>, Option<bool>, Option<f64>) = sqlx::query_as(
        "SELECT util_pct, mig_enabled, energy_joules FROM gpu_samples WHERE gpu_index = 2 ORDER BY ts OFFSET 1 LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(g2, (None, Some(true), Some(200.0)));
    let max_rows_per_ts: i64 = sqlx::query_scalar(
        "SELECT max(n) FROM (SELECT count(*) AS n FROM gpu_samples GROUP BY ts) t",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(max_rows_per_ts, 3);

    // ---- inventory ---------------------------------------------------------------
    let inv: (Option<String>, Option<String>, Option<f64>, Option<String>) = sqlx::query_as(
        "SELECT uuid, model, power_limit_watts, driver_version FROM gpus WHERE gpu_index = 0",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        inv,
        (
            Some("GPU-11111111-2222-3333-4444-000000000000".into()),
            Some("NVIDIA H100 80GB HBM3".into()),
            Some(700.0),
            Some("550.54.15".into())
        )
    );

    // ---- every scripted fault, exactly once ----------------------------------------
    let events: Vec<(i16, String, i64, i32)> = sqlx::query_as(
        "SELECT gpu_index, kind, code, count FROM hardware_events ORDER BY gpu_index, kind, code",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let expected: Vec<(i16, String, i64, i32)> = vec![
        (0, "ecc_dbe".into(), 0, 2),
        (0, "power_brake".into(), 128, 1),
        (0, "row_remap_failure".into(), 0, 1),
        (0, "row_remap_pending".into(), 0, 1),
        (0, "thermal_throttle".into(), 64, 1),
        (0, "xid".into(), 13, 3),
        (0, "xid".into(), 119, 1),
        (1, "gpu_lost".into(), 0, 1),
        (1, "xid".into(), 48, 1),
        (1, "xid".into(), 79, 1),
        (2, "gpu_lost".into(), 0, 1),
    ];
    assert_eq!(events, expected);

    // ---- the API says what each event means and what to do -------------------------
    let cookie = app.login("ops", "correct horse battery").await;
    let api: Vec<serde_json::Value> = app
        .http
        .get(format!("{}/api/v1/events?host=gpu-node-1", app.base))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api.len(), expected.len());
    let find = |kind: &str, code: i64| {
        api.iter()
            .find(|e| e["kind"] == kind && e["code"] == code)
            .unwrap_or_else(|| panic!("{kind} {code} in {api:?}"))
            .clone()
    };
    let e79 = find("xid", 79);
    assert_eq!(e79["index"], 1);
    assert!(e79["meaning"]
        .as_str()
        .unwrap()
        .contains("fallen off the bus"));
    assert!(e79["action"]
        .as_str()
        .unwrap()
        .starts_with("restart the node"));
    assert!(find("xid", 48)["action"]
        .as_str()
        .unwrap()
        .starts_with("reset the GPU"));
    assert!(find("xid", 13)["action"]
        .as_str()
        .unwrap()
        .starts_with("check the application"));
    assert!(find("gpu_lost", 0)["meaning"]
        .as_str()
        .unwrap()
        .contains("unreachable"));
    // And the host page shows them.
    let page = app
        .http
        .get(format!("{}/hosts/gpu-node-1", app.base))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("GPU has fallen off the bus"),
        "host page lists XID 79's meaning"
    );
    assert!(
        page.contains("restart the node"),
        "host page lists the action"
    );
    app.stop().await;
}

/// A configured NVML library that is not there stops the agent at start, naming the key:
/// with a typo in the path, a GPU host would otherwise report no GPUs and say so only at
/// info level.
#[test]
fn a_configured_nvml_library_that_is_missing_is_refused_at_start() {
    let mut cfg = rackwatch::config::Config::default();
    cfg.agent.nvml_lib_path = "/nonexistent/libnvidia-ml.so".into();
    let err = match rackwatch::app::local_sources(&cfg) {
        Ok(_) => panic!("a missing NVML library was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.starts_with("agent.nvml_lib_path = \"/nonexistent/libnvidia-ml.so\": no such file"),
        "{err}"
    );
    // `off` reads no GPUs on purpose, and starts.
    cfg.agent.nvml_lib_path = "off".into();
    assert!(rackwatch::app::local_sources(&cfg).is_ok());
}
