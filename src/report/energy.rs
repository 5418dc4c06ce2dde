//! The weekly energy-efficiency report: energy, PUE, carbon, cost and idle waste per
//! GPU, host, rack, pool, site and the fleet, from the hourly energy accounting.
//!
//! Definitions (also in docs/energy.md):
//! - IT energy = GPU energy + host (non-GPU) energy.
//! - Facility energy = IT energy × PUE. Where a site sends facility meter readings, the
//!   hours they cover use the metered energy (PUE measured); other hours of that site
//!   use the PUE measured over the metered hours of the week, else the configured PUE.
//! - Carbon and cost are charged on facility energy, hour by hour, with the site's grid
//!   intensity (imported hourly values, else the configured constant) and tariff
//!   (time-of-use period of the local hour, else the flat price).
//! - CUE = carbon (kg CO2e) / IT energy (kWh).
//! - Idle GPU energy: energy of GPU minutes below the idle threshold; its cost and
//!   carbon include the facility overhead (× PUE) of the hour.
//! - Energy per busy GPU-hour = GPU energy / busy GPU-hours (idle energy included, so
//!   idle waste makes it worse).
//! - Coverage = minutes with samples / minutes expected. A GPU or host is expected from
//!   the week's start if it reported in the previous week, else from its first hour this
//!   week, until the end of the week or of the accounted hours.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Datelike, Duration, DurationRound, Timelike, Utc};
use chrono_tz::Tz;

use super::IsoWeek;
use crate::config::{parse_weekday, EnergyConfig, SiteEnergy};
use crate::model::format::count;
use crate::store::Store;

const J_PER_KWH: f64 = 3.6e6;

/// One line of the report: a GPU, a host, a rack, a pool, a site or the fleet;
/// docs/energy.md defines every figure.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[schema(as = EnergyReportRow)]
pub struct ReportRow {
    #[schema(schema_with = levels)]
    pub level: &'static str,
    pub site: String,
    pub rack: String,
    pub pool: String,
    pub host: String,
    pub gpu_index: Option<i32>,
    pub gpu_uuid: String,
    pub gpu_model: String,
    /// GPUs in this line.
    pub gpus: u32,
    pub it_energy_kwh: f64,
    pub gpu_energy_kwh: f64,
    /// Hosts' energy outside their GPUs.
    pub host_energy_kwh: f64,
    pub measured_energy_kwh: f64,
    pub estimated_energy_kwh: f64,
    pub modeled_energy_kwh: f64,
    pub facility_energy_kwh: f64,
    pub pue: Option<f64>,
    #[schema(schema_with = pue_sources)]
    pub pue_source: &'static str,
    pub carbon_kg: f64,
    pub cue_kg_per_kwh: Option<f64>,
    /// None where the line mixes currencies.
    pub cost: Option<f64>,
    pub currency: String,
    pub idle_gpu_energy_kwh: f64,
    pub idle_gpu_cost: Option<f64>,
    pub idle_gpu_carbon_kg: f64,
    pub idle_gpu_hours: f64,
    pub busy_gpu_hours: f64,
    pub energy_per_busy_gpu_hour_kwh: Option<f64>,
    pub gpu_util_mean_pct: Option<f64>,
    pub power_throttled_hours: f64,
    pub thermal_throttled_hours: f64,
    pub coverage_pct: Option<f64>,
    pub counter_resets: i64,
    /// Null when last week (its same hours, while a week runs) accounted no energy.
    pub prev_week_it_energy_kwh: Option<f64>,
    pub wow_change_pct: Option<f64>,
}

fn levels() -> utoipa::openapi::schema::Object {
    crate::model::schema::one_of(&["fleet", "site", "rack", "pool", "host", "gpu"])
}

fn pue_sources() -> utoipa::openapi::schema::Object {
    crate::model::schema::one_of(&["configured", "measured", "partly measured"])
}

/// Energy of one local day, for the daily chart.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[schema(as = EnergyDay)]
pub struct DayTotals {
    /// Local date, YYYY-MM-DD.
    pub date: String,
    pub gpu_busy_kwh: f64,
    pub gpu_idle_kwh: f64,
    pub host_kwh: f64,
    /// Facility energy beyond IT (cooling, power distribution).
    pub overhead_kwh: f64,
}

/// A recommended action with the figures behind it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[schema(as = EnergyAction)]
pub struct Action {
    pub title: String,
    pub detail: String,
}

/// The report of one week.
#[derive(Debug, Clone)]
pub struct EnergyReport {
    pub week: IsoWeek,
    pub time_zone: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub site: Option<String>,
    pub generated_at: DateTime<Utc>,
    /// Hours are accounted up to here; a running week is partial.
    pub accounted_until: Option<DateTime<Utc>>,
    pub idle_util_pct: f64,
    /// Fleet (or the site when one is chosen) first, then sites, racks, pools, hosts, GPUs.
    pub rows: Vec<ReportRow>,
    pub days: Vec<DayTotals>,
    pub actions: Vec<Action>,
    pub notes: Vec<String>,
}

impl EnergyReport {
    /// The headline line: the fleet, or the chosen site.
    pub fn total(&self) -> &ReportRow {
        &self.rows[0]
    }

    /// Lines of one level.
    pub fn level<'a>(&'a self, level: &'a str) -> impl Iterator<Item = &'a ReportRow> + 'a {
        self.rows.iter().filter(move |r| r.level == level)
    }

    /// The `n` lines of `level` with the largest `key`, largest first, zeros left out.
    pub fn top<'a>(
        &'a self,
        level: &'a str,
        n: usize,
        key: fn(&ReportRow) -> f64,
    ) -> Vec<&'a ReportRow> {
        let mut v: Vec<&ReportRow> = self.level(level).filter(|r| key(r) > 0.0).collect();
        v.sort_by(|a, b| key(b).total_cmp(&key(a)));
        v.truncate(n);
        v
    }

    /// True when the whole week is accounted and nothing was in it: no host reported then,
    /// or its samples are past retention.
    pub fn no_data(&self) -> bool {
        let t = self.total();
        !self.partial() && t.coverage_pct.is_none() && t.it_energy_kwh == 0.0
    }

    /// True when the week is not fully accounted yet.
    pub fn partial(&self) -> bool {
        self.accounted_until.is_none_or(|t| t < self.end)
    }
}

/// One row of `energy_hourly`.
struct Hourly {
    host_id: i64,
    gpu_index: i16,
    hour: DateTime<Utc>,
    measured_j: f64,
    estimated_j: f64,
    modeled_j: f64,
    idle_j: f64,
    covered_minutes: i32,
    idle_minutes: i32,
    busy_minutes: i32,
    util_sum: f64,
    power_max_w: Option<f64>,
    counter_resets: i32,
    power_throttle_s: f64,
    thermal_throttle_s: f64,
}

struct HostInfo {
    id: i64,
    name: String,
    site: String,
    rack: String,
    pool: String,
    /// Taken out of the fleet: not expected to report after this.
    removed_at: Option<DateTime<Utc>>,
}

#[derive(Default, Clone)]
struct Acc {
    gpu_j: f64,
    host_j: f64,
    measured_j: f64,
    estimated_j: f64,
    modeled_j: f64,
    facility_j: f64,
    carbon_g: f64,
    cost: f64,
    idle_j: f64,
    idle_cost: f64,
    idle_carbon_g: f64,
    idle_minutes: f64,
    busy_minutes: f64,
    gpu_util_sum: f64,
    gpu_covered: f64,
    covered: f64,
    expected: f64,
    power_throttle_s: f64,
    thermal_throttle_s: f64,
    resets: i64,
    metered_hours: u32,
    hours: u32,
    prev_it_j: f64,
    gpus: u32,
    currencies: Vec<String>,
}

impl Acc {
    fn add(&mut self, o: &Acc) {
        self.gpu_j += o.gpu_j;
        self.host_j += o.host_j;
        self.measured_j += o.measured_j;
        self.estimated_j += o.estimated_j;
        self.modeled_j += o.modeled_j;
        self.facility_j += o.facility_j;
        self.carbon_g += o.carbon_g;
        self.cost += o.cost;
        self.idle_j += o.idle_j;
        self.idle_cost += o.idle_cost;
        self.idle_carbon_g += o.idle_carbon_g;
        self.idle_minutes += o.idle_minutes;
        self.busy_minutes += o.busy_minutes;
        self.gpu_util_sum += o.gpu_util_sum;
        self.gpu_covered += o.gpu_covered;
        self.covered += o.covered;
        self.expected += o.expected;
        self.power_throttle_s += o.power_throttle_s;
        self.thermal_throttle_s += o.thermal_throttle_s;
        self.resets += o.resets;
        self.metered_hours += o.metered_hours;
        self.hours += o.hours;
        self.prev_it_j += o.prev_it_j;
        self.gpus += o.gpus;
        for c in &o.currencies {
            if !self.currencies.contains(c) {
                self.currencies.push(c.clone());
            }
        }
    }
}

/// A GPU (index ≥ 0) or a host's non-GPU part (index −1).
type Entity = (i64, i16);

/// Per-site, per-hour factors.
struct SiteHours {
    cfg: SiteEnergy,
    /// Metered facility joules per hour offset, where readings cover the hour.
    meter_j: HashMap<i64, f64>,
    carbon: HashMap<i64, f64>,
    it_j: HashMap<i64, f64>,
    /// PUE for hours without meter readings.
    fallback_pue: f64,
    /// Metered hours left out: their PUE, which no facility has.
    implausible: Vec<f64>,
    /// Metered hours with a plausible PUE.
    metered_hours: usize,
    /// Hours the readings cover only in part (or more than once): left out of the
    /// metered ones.
    partly_metered: usize,
}

const HOUR_MS: i64 = 3_600_000;

/// The PUEs a facility can have: its energy includes the IT energy (≥ 1), and even a
/// poorly cooled room spends less than four times the IT energy again on overhead. A
/// metered hour outside is a wrong reading (a meter reset, a period off by hours, kWh
/// sent as MWh) and is left out, with a note.
const PLAUSIBLE_PUE: std::ops::RangeInclusive<f64> = 1.0..=5.0;

/// Metered hours a week needs before their PUE stands for the site's other hours: a day.
/// From fewer, one odd hour would set the whole week's facility energy.
const METERED_HOURS_FOR_FALLBACK: usize = 24;

impl SiteHours {
    fn pue(&self, h: i64) -> (f64, bool) {
        match (self.meter_j.get(&h), self.it_j.get(&h)) {
            (Some(m), Some(it)) if *it > 0.0 => (m / it, true),
            _ => (self.fallback_pue, false),
        }
    }
}

fn tou_price(site: &SiteEnergy, local: DateTime<Tz>) -> f64 {
    for p in &site.time_of_use {
        let day_ok = p.days.is_empty()
            || p.days
                .iter()
                .any(|d| parse_weekday(d) == Some(local.weekday()));
        if day_ok && (p.start_hour..p.end_hour).contains(&local.hour()) {
            return p.price_per_kwh;
        }
    }
    site.price_per_kwh
}

fn hour_floor(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(Duration::hours(1))
        .expect("hour truncation")
}

/// The accounting hours of `week` in `tz`, `[start, end)`: accounting hours are UTC hours,
/// so in zones with a half-hour offset the week's edges fall on the whole hour before.
/// The report, the energy page's week list and the default week all count these.
pub fn week_hours(week: IsoWeek, tz: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
    (hour_floor(week.start(tz)), hour_floor(week.end(tz)))
}

/// What the report reads from the database for one week.
struct Inputs {
    hosts: Vec<HostInfo>,
    /// UUID and model per GPU.
    gpu_info: HashMap<Entity, (String, String)>,
    power_limit: HashMap<Entity, f64>,
    /// The week's accounting rows.
    rows: Vec<Hourly>,
    /// Last week's IT energy per entity.
    prev: HashMap<Entity, f64>,
    /// Facility meter readings and carbon intensity per site, by hour of the week.
    site_hours: HashMap<String, SiteHours>,
    accounted_until: Option<DateTime<Utc>>,
}

/// The week's hours as offsets from its first hour.
#[derive(Clone, Copy)]
struct Hours {
    /// First hour of the week (UTC), and the hour after its last.
    h0: DateTime<Utc>,
    h1: DateTime<Utc>,
}

impl Hours {
    fn ix(&self, t: DateTime<Utc>) -> i64 {
        (t - self.h0).num_hours()
    }
}

async fn load_inputs(
    store: &Store,
    cfg: &EnergyConfig,
    week: IsoWeek,
    site: Option<&str>,
    hours: Hours,
) -> anyhow::Result<Inputs> {
    let tz = cfg.tz();
    let Hours { h0, h1 } = hours;
    let p0 = hour_floor(week.prev().start(tz));
    crate::analytics::energy::ensure_accounted(store, cfg, p0, h1).await?;
    let accounted_until = crate::analytics::energy::watermark(store).await?;
    // Last week's energy over the same hours as this week's: all of it for a complete
    // week (whatever its length: after a daylight-saving change one week has 167 hours and
    // the other 168 or 169), its first N hours while this week has N hours accounted (a
    // running week's three days are not compared with a whole week).
    let until = horizon(accounted_until, hours);
    let p1 = if until >= h1 {
        h0
    } else {
        (p0 + (until - h0)).min(h0)
    };

    let hosts: Vec<HostInfo> = sqlx::query_as!(
        HostInfo,
        "SELECT id, name, site, rack, pool, removed_at FROM hosts WHERE ($1::text IS NULL OR site = $1) ORDER BY name",
        site,
    )
    .fetch_all(&store.pool)
    .await?;
    if let (Some(s), true) = (site, hosts.is_empty()) {
        anyhow::bail!("no host belongs to site {s:?}");
    }
    let host_ids: Vec<i64> = hosts.iter().map(|h| h.id).collect();
    /// host id, GPU index, UUID, model, power limit
    type GpuRow = (i64, i16, Option<String>, Option<String>, Option<f64>);
    let gpus: Vec<GpuRow> = sqlx::query!(
        "SELECT host_id, gpu_index, uuid, model, power_limit_watts FROM gpus WHERE host_id = ANY($1)",
        &host_ids,
    )
    .fetch_all(&store.pool)
    .await?
    .into_iter()
    .map(|r| (r.host_id, r.gpu_index, r.uuid, r.model, r.power_limit_watts))
    .collect();
    let gpu_info = gpus
        .iter()
        .map(|(h, i, u, m, _)| {
            (
                (*h, *i),
                (u.clone().unwrap_or_default(), m.clone().unwrap_or_default()),
            )
        })
        .collect();
    let power_limit = gpus
        .iter()
        .filter_map(|(h, i, _, _, p)| p.map(|p| ((*h, *i), p)))
        .collect();
    let rows: Vec<Hourly> = sqlx::query_as!(
        Hourly,
        "SELECT host_id, gpu_index, hour, measured_j, estimated_j, modeled_j, idle_j, covered_minutes,
                idle_minutes, busy_minutes, util_sum, power_max_w, counter_resets, power_throttle_s,
                thermal_throttle_s
           FROM energy_hourly WHERE hour >= $1 AND hour < $2 AND host_id = ANY($3)",
        h0,
        // The hours accounted, which the coverage expects and the notes name: not the
        // running hour the fleet page's energy reads ahead of the watermark.
        horizon(accounted_until, hours),
        &host_ids,
    )
    .fetch_all(&store.pool)
    .await?;
    let prev: HashMap<Entity, f64> = sqlx::query!(
        r#"SELECT host_id, gpu_index, sum(measured_j + estimated_j + modeled_j) AS "joules!"
           FROM energy_hourly WHERE hour >= $1 AND hour < $2 AND host_id = ANY($3) GROUP BY 1, 2"#,
        p0,
        p1,
        &host_ids,
    )
    .fetch_all(&store.pool)
    .await?
    .into_iter()
    .map(|r| ((r.host_id, r.gpu_index), r.joules))
    .collect();
    let site_hours = load_site_hours(store, cfg, &hosts, hours).await?;
    Ok(Inputs {
        hosts,
        gpu_info,
        power_limit,
        rows,
        prev,
        site_hours,
        accounted_until,
    })
}

/// Site factors: facility meter readings spread over the hours they cover, grid carbon
/// intensity by hour.
async fn load_site_hours(
    store: &Store,
    cfg: &EnergyConfig,
    hosts: &[HostInfo],
    hours: Hours,
) -> anyhow::Result<HashMap<String, SiteHours>> {
    let Hours { h0, h1 } = hours;
    let mut sites: Vec<String> = hosts.iter().map(|h| h.site.clone()).collect();
    sites.sort();
    sites.dedup();
    let mut site_hours: HashMap<String, SiteHours> = sites
        .iter()
        .map(|s| {
            (
                s.clone(),
                SiteHours {
                    cfg: cfg.site(s).clone(),
                    meter_j: HashMap::new(),
                    carbon: HashMap::new(),
                    it_j: HashMap::new(),
                    fallback_pue: cfg.site(s).pue,
                    implausible: Vec::new(),
                    metered_hours: 0,
                    partly_metered: 0,
                },
            )
        })
        .collect();
    let readings = sqlx::query!(
        "SELECT site, start_ts, end_ts, energy_kwh FROM facility_readings
          WHERE site = ANY($1) AND end_ts > $2 AND start_ts < $3 AND start_ts > $4",
        &sites,
        h0,
        h1,
        // A reading covers at most 31 days: the site's older ones need not be read.
        h0 - Duration::days(super::inputs::MAX_READING_DAYS),
    )
    .fetch_all(&store.pool)
    .await?;
    // How much of each hour the readings cover, ms: only an hour covered whole, and once,
    // is metered (a reading for 10:00–10:45 alone would give the hour a PUE a quarter
    // low, two overlapping ones one twice as high, both still "plausible").
    let mut covered: HashMap<(String, i64), i64> = HashMap::new();
    for r in readings {
        let (s, a, b, kwh) = (r.site, r.start_ts, r.end_ts, r.energy_kwh);
        let Some(sh) = site_hours.get_mut(&s) else {
            continue;
        };
        let dur = (b - a).num_milliseconds() as f64;
        let mut h = hour_floor(a).max(h0);
        while h < b.min(h1) {
            let lo = a.max(h);
            let hi = b.min(h + Duration::hours(1));
            if hi > lo {
                let ms = (hi - lo).num_milliseconds();
                *sh.meter_j.entry(hours.ix(h)).or_default() += kwh * J_PER_KWH * ms as f64 / dur;
                *covered.entry((s.clone(), hours.ix(h))).or_default() += ms;
            }
            h += Duration::hours(1);
        }
    }
    for ((s, h), ms) in covered {
        if ms != HOUR_MS {
            if let Some(sh) = site_hours.get_mut(&s) {
                sh.meter_j.remove(&h);
                sh.partly_metered += 1;
            }
        }
    }
    let carbon = sqlx::query!(
        "SELECT site, hour, g_co2_per_kwh FROM grid_intensity WHERE site = ANY($1) AND hour >= $2 AND hour < $3",
        &sites,
        h0,
        h1,
    )
    .fetch_all(&store.pool)
    .await?;
    for r in carbon {
        let (s, h, g) = (r.site, r.hour, r.g_co2_per_kwh);
        if let Some(sh) = site_hours.get_mut(&s) {
            sh.carbon.insert(hours.ix(hour_floor(h)), g);
        }
    }
    Ok(site_hours)
}

/// IT energy per site and hour, and from it the metered PUE of each site's hours with
/// meter readings (the fallback for the others). Returns each entity's first hour.
fn metered_pue(
    rows: &[Hourly],
    host_by_id: &HashMap<i64, &HostInfo>,
    site_hours: &mut HashMap<String, SiteHours>,
    hours: Hours,
) -> HashMap<Entity, i64> {
    let mut first_hour: HashMap<Entity, i64> = HashMap::new();
    for r in rows {
        let Some(host) = host_by_id.get(&r.host_id) else {
            continue;
        };
        let j = r.measured_j + r.estimated_j + r.modeled_j;
        let sh = site_hours.get_mut(&host.site).expect("site of host");
        *sh.it_j.entry(hours.ix(r.hour)).or_default() += j;
        let f = first_hour
            .entry((r.host_id, r.gpu_index))
            .or_insert(i64::MAX);
        *f = (*f).min(hours.ix(r.hour));
    }
    for sh in site_hours.values_mut() {
        let (mut m, mut it) = (0.0, 0.0);
        let mut wrong = Vec::new();
        for (h, mj) in &sh.meter_j {
            if let Some(i) = sh.it_j.get(h).filter(|i| **i > 0.0) {
                if PLAUSIBLE_PUE.contains(&(mj / i)) {
                    m += mj;
                    it += i;
                    sh.metered_hours += 1;
                } else {
                    wrong.push((*h, mj / i));
                }
            }
        }
        for (h, pue) in wrong {
            sh.meter_j.remove(&h);
            sh.implausible.push(pue);
        }
        if it > 0.0 && sh.metered_hours >= METERED_HOURS_FOR_FALLBACK {
            sh.fallback_pue = m / it;
        }
    }
    first_hour
}

/// Per entity and per day: energy with its hour's PUE, price and carbon.
struct Accumulated {
    ent: HashMap<Entity, Acc>,
    power_max: HashMap<Entity, f64>,
    days: Vec<DayTotals>,
}

fn accumulate(
    inp: &Inputs,
    host_by_id: &HashMap<i64, &HostInfo>,
    week: IsoWeek,
    tz: Tz,
    hours: Hours,
) -> Accumulated {
    let mut days: Vec<DayTotals> = (0..7)
        .map(|d| DayTotals {
            date: (week.monday() + Duration::days(d)).to_string(),
            ..Default::default()
        })
        .collect();
    let mut ent: HashMap<Entity, Acc> = HashMap::new();
    let mut power_max: HashMap<Entity, f64> = HashMap::new();
    for r in &inp.rows {
        let Some(host) = host_by_id.get(&r.host_id) else {
            continue;
        };
        let sh = &inp.site_hours[&host.site];
        let hx = hours.ix(r.hour);
        let (pue, metered) = sh.pue(hx);
        let local = r.hour.with_timezone(&tz);
        let price = tou_price(&sh.cfg, local);
        let g_per_kwh = sh
            .carbon
            .get(&hx)
            .copied()
            .unwrap_or(sh.cfg.carbon_g_per_kwh);
        let it = r.measured_j + r.estimated_j + r.modeled_j;
        let fac_kwh = it * pue / J_PER_KWH;
        let a = ent.entry((r.host_id, r.gpu_index)).or_default();
        if r.gpu_index >= 0 {
            a.gpu_j += it;
            a.idle_j += r.idle_j;
            a.idle_cost += r.idle_j * pue / J_PER_KWH * price;
            a.idle_carbon_g += r.idle_j * pue / J_PER_KWH * g_per_kwh;
            a.idle_minutes += f64::from(r.idle_minutes);
            a.busy_minutes += f64::from(r.busy_minutes);
            a.gpu_util_sum += r.util_sum;
            a.gpu_covered += f64::from(r.idle_minutes + r.busy_minutes);
            a.power_throttle_s += r.power_throttle_s;
            a.thermal_throttle_s += r.thermal_throttle_s;
            a.resets += i64::from(r.counter_resets);
            if let Some(p) = r.power_max_w {
                let m = power_max.entry((r.host_id, r.gpu_index)).or_insert(0.0);
                *m = m.max(p);
            }
        } else {
            a.host_j += it;
        }
        a.measured_j += r.measured_j;
        a.estimated_j += r.estimated_j;
        a.modeled_j += r.modeled_j;
        a.facility_j += fac_kwh * J_PER_KWH;
        a.cost += fac_kwh * price;
        a.carbon_g += fac_kwh * g_per_kwh;
        a.covered += f64::from(r.covered_minutes);
        a.hours += 1;
        a.metered_hours += u32::from(metered);
        // The day of the hour's middle: in a zone half an hour off UTC's hours (India) the
        // week's first UTC hour starts at 23:30 on Sunday, and its energy is Monday's.
        let mid = (r.hour + Duration::minutes(30)).with_timezone(&tz);
        let day = (mid.date_naive() - week.monday()).num_days();
        if let Some(d) = usize::try_from(day).ok().and_then(|d| days.get_mut(d)) {
            if r.gpu_index >= 0 {
                d.gpu_idle_kwh += r.idle_j / J_PER_KWH;
                d.gpu_busy_kwh += (it - r.idle_j) / J_PER_KWH;
            } else {
                d.host_kwh += it / J_PER_KWH;
            }
            d.overhead_kwh += fac_kwh - it / J_PER_KWH;
        }
    }
    Accumulated {
        ent,
        power_max,
        days,
    }
}

/// The end of the week's accounted hours: the week's end, or the accounting's watermark
/// while the week runs.
fn horizon(accounted_until: Option<DateTime<Utc>>, hours: Hours) -> DateTime<Utc> {
    accounted_until
        .map_or(hours.h1, |t| t.min(hours.h1))
        .max(hours.h0)
}

/// Each entity's expected minutes (for coverage: the whole week so far, or since its
/// first hour when it is new this week), last week's energy and its site's currency.
fn complete_entities(
    ent: &mut HashMap<Entity, Acc>,
    inp: &Inputs,
    host_by_id: &HashMap<i64, &HostInfo>,
    first_hour: &HashMap<Entity, i64>,
    hours: Hours,
) {
    let total_minutes = (horizon(inp.accounted_until, hours) - hours.h0).num_minutes() as f64;
    for (e, j) in &inp.prev {
        if host_by_id.contains_key(&e.0) && !ent.contains_key(e) {
            ent.insert(*e, Acc::default());
        }
        if let Some(a) = ent.get_mut(e) {
            a.prev_it_j = *j;
        }
    }
    for (e, a) in ent.iter_mut() {
        let host = host_by_id[&e.0];
        // A host taken out of the fleet mid-week is expected until then only.
        let until = host.removed_at.map_or(total_minutes, |r| {
            ((r - hours.h0).num_minutes() as f64).clamp(0.0, total_minutes)
        });
        a.expected = if inp.prev.contains_key(e) {
            until
        } else {
            let f = first_hour.get(e).copied().unwrap_or(0);
            (until - 60.0 * f as f64).max(0.0)
        }
        .max(a.covered);
        a.gpus = u32::from(e.1 >= 0);
        a.currencies = vec![inp.site_hours[&host.site].cfg.currency.clone()];
    }
}

/// A report row's place: (level, site, rack, pool, host, GPU index or −2).
type LevelKey = (u8, String, String, String, String, i32);

/// Entities rolled up the hierarchy (fleet, site, rack, pool, host, GPU) into rows.
fn roll_up(
    ent: &HashMap<Entity, Acc>,
    inp: &Inputs,
    host_by_id: &HashMap<i64, &HostInfo>,
    site: Option<&str>,
) -> Vec<ReportRow> {
    let mut levels: BTreeMap<LevelKey, Acc> = BTreeMap::new();
    for (e, a) in ent {
        let h = host_by_id[&e.0];
        let none = String::new;
        let keys: [LevelKey; 5] = [
            (0, none(), none(), none(), none(), -2),
            (1, h.site.clone(), none(), none(), none(), -2),
            (2, h.site.clone(), h.rack.clone(), none(), none(), -2),
            (3, none(), none(), h.pool.clone(), none(), -2),
            (
                4,
                h.site.clone(),
                h.rack.clone(),
                h.pool.clone(),
                h.name.clone(),
                -2,
            ),
        ];
        for k in keys {
            levels.entry(k).or_default().add(a);
        }
        if e.1 >= 0 {
            let k = (
                5,
                h.site.clone(),
                h.rack.clone(),
                h.pool.clone(),
                h.name.clone(),
                i32::from(e.1),
            );
            levels.entry(k).or_default().add(a);
        }
    }
    let names = ["fleet", "site", "rack", "pool", "host", "gpu"];
    let mut out: Vec<ReportRow> = Vec::new();
    for ((lvl, s, rk, pl, hn, gi), a) in &levels {
        if site.is_some() && *lvl == 0 {
            continue;
        }
        let host_id = inp.hosts.iter().find(|h| &h.name == hn).map(|h| h.id);
        let (uuid, model) = host_id
            .and_then(|id| inp.gpu_info.get(&(id, *gi as i16)))
            .cloned()
            .unwrap_or_default();
        // A site's report holds that site's share of each pool: its rows say so, so that
        // two sites' files combined read as two rows, not one pool twice.
        let s = match (*lvl, site) {
            (3, Some(only)) => only,
            _ => s.as_str(),
        };
        out.push(row_of(
            names[*lvl as usize],
            s,
            rk,
            pl,
            hn,
            (*gi >= 0).then_some(*gi),
            uuid,
            model,
            a,
        ));
    }
    if out.is_empty() {
        out.push(row_of(
            if site.is_some() { "site" } else { "fleet" },
            site.unwrap_or(""),
            "",
            "",
            "",
            None,
            String::new(),
            String::new(),
            &Acc::default(),
        ));
    }
    out
}

/// The week a report shows when none is named: last week, the complete one, unless the
/// running week already holds as many days of data (a new install whose history starts
/// late last week, where last week would be nearly empty). The dashboard, the API and the
/// command line agree on it.
pub async fn default_week(
    store: &Store,
    cfg: &EnergyConfig,
    site: Option<&str>,
    now: DateTime<Utc>,
) -> Result<IsoWeek, sqlx::Error> {
    let tz = cfg.tz();
    let running = IsoWeek::containing(now, tz);
    let last = running.prev();
    // Days with energy accounted in each of the two weeks.
    let days = |w: IsoWeek| {
        let (from, to) = week_hours(w, tz);
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(DISTINCT LEAST(6, floor(extract(epoch FROM e.hour - $1) / 86400)))::int8
                   FROM energy_hourly e JOIN hosts h ON h.id = e.host_id
                  WHERE e.hour >= $1 AND e.hour < $2 AND ($3::text IS NULL OR h.site = $3)
                    AND e.measured_j + e.estimated_j + e.modeled_j > 0",
            )
            .bind(from)
            .bind(to)
            .bind(site)
            .fetch_one(&store.pool)
            .await
        }
    };
    let (last_days, running_days) = (days(last).await?, days(running).await?);
    Ok(choose_week(last, last_days, running, running_days))
}

/// See [`default_week`]: last week when it has data and at least as many days as the
/// running week.
pub fn choose_week(last: IsoWeek, last_days: i64, running: IsoWeek, running_days: i64) -> IsoWeek {
    if last_days > 0 && last_days >= running_days {
        last
    } else {
        running
    }
}

pub async fn build(
    store: &Store,
    cfg: &EnergyConfig,
    week: IsoWeek,
    site: Option<&str>,
    now: DateTime<Utc>,
) -> anyhow::Result<EnergyReport> {
    let tz = cfg.tz();
    let start = week.start(tz);
    let end = week.end(tz);
    let (h0, h1) = week_hours(week, tz);
    let hours = Hours { h0, h1 };
    let mut inp = load_inputs(store, cfg, week, site, hours).await?;
    let host_by_id: HashMap<i64, &HostInfo> = inp.hosts.iter().map(|h| (h.id, h)).collect();
    let first_hour = metered_pue(&inp.rows, &host_by_id, &mut inp.site_hours, hours);
    let Accumulated {
        mut ent,
        power_max,
        days,
    } = accumulate(&inp, &host_by_id, week, tz, hours);
    complete_entities(&mut ent, &inp, &host_by_id, &first_hour, hours);
    let rows = roll_up(&ent, &inp, &host_by_id, site);
    let mut report = EnergyReport {
        week,
        time_zone: cfg.time_zone.clone(),
        start,
        end,
        site: site.map(str::to_string),
        generated_at: now,
        accounted_until: inp.accounted_until,
        idle_util_pct: cfg.idle_util_pct,
        rows,
        days,
        actions: Vec::new(),
        notes: Vec::new(),
    };
    recommend(&mut report, &power_max, &inp.power_limit, &inp.hosts);
    report.notes.extend(meter_notes(&inp.site_hours));
    Ok(report)
}

/// What the report did with each site's facility readings, where that is not plain.
fn meter_notes(site_hours: &HashMap<String, SiteHours>) -> Vec<String> {
    let mut sites: Vec<(&String, &SiteHours)> = site_hours.iter().collect();
    sites.sort_by_key(|(s, _)| s.as_str());
    let mut notes = Vec::new();
    for (site, sh) in sites {
        let name = if site.is_empty() { "(no site)" } else { site };
        if !sh.implausible.is_empty() {
            let (lo, hi) = sh
                .implausible
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(*p), b.max(*p)));
            let range = if (hi - lo).abs() < 0.005 {
                format!("{lo:.2}")
            } else {
                format!("{lo:.2} to {hi:.2}")
            };
            notes.push(format!(
                "Site {name}: facility readings of {} left out: they give a PUE of {range}, and a facility draws 1 to 5 times its IT energy. Those hours use the PUE {:.2}. Check the meter and the readings' start and end.",
                crate::model::format::count(sh.implausible.len(), "hour"),
                sh.fallback_pue
            ));
        }
        if sh.partly_metered > 0 {
            notes.push(format!(
                "Site {name}: facility readings cover {} only in part or more than once; those hours use the PUE {:.2}. Readings should tile the time: each hour whole, once.",
                crate::model::format::count(sh.partly_metered, "hour"),
                sh.fallback_pue
            ));
        }
        let unmetered = sh.it_j.len().saturating_sub(sh.metered_hours);
        if sh.metered_hours > 0 && sh.metered_hours < METERED_HOURS_FOR_FALLBACK && unmetered > 0 {
            notes.push(format!(
                "Site {name}: facility readings cover {} of this week; its other hours use the configured PUE {:.2} (a measured PUE stands for the other hours once readings cover {METERED_HOURS_FOR_FALLBACK} h).",
                crate::model::format::count(sh.metered_hours, "hour"),
                sh.fallback_pue
            ));
        }
    }
    notes
}

#[allow(clippy::too_many_arguments)]
fn row_of(
    level: &'static str,
    site: &str,
    rack: &str,
    pool: &str,
    host: &str,
    gpu_index: Option<i32>,
    gpu_uuid: String,
    gpu_model: String,
    a: &Acc,
) -> ReportRow {
    let kwh = |j: f64| j / J_PER_KWH;
    let it = kwh(a.gpu_j + a.host_j);
    let facility = kwh(a.facility_j);
    let one_currency = a.currencies.len() <= 1;
    let busy_h = a.busy_minutes / 60.0;
    ReportRow {
        level,
        site: site.into(),
        rack: rack.into(),
        pool: pool.into(),
        host: host.into(),
        gpu_index,
        gpu_uuid,
        gpu_model,
        gpus: a.gpus,
        it_energy_kwh: it,
        gpu_energy_kwh: kwh(a.gpu_j),
        host_energy_kwh: kwh(a.host_j),
        measured_energy_kwh: kwh(a.measured_j),
        estimated_energy_kwh: kwh(a.estimated_j),
        modeled_energy_kwh: kwh(a.modeled_j),
        facility_energy_kwh: facility,
        pue: (it > 0.0).then(|| digits12(facility / it)),
        pue_source: if a.metered_hours == 0 {
            "configured"
        } else if a.metered_hours == a.hours {
            "measured"
        } else {
            "partly measured"
        },
        carbon_kg: a.carbon_g / 1000.0,
        cue_kg_per_kwh: (it > 0.0).then(|| digits12(a.carbon_g / 1000.0 / it)),
        cost: one_currency.then_some(a.cost),
        currency: if one_currency {
            a.currencies.first().cloned().unwrap_or_default()
        } else {
            "mixed".into()
        },
        idle_gpu_energy_kwh: kwh(a.idle_j),
        idle_gpu_cost: one_currency.then_some(a.idle_cost),
        idle_gpu_carbon_kg: a.idle_carbon_g / 1000.0,
        idle_gpu_hours: a.idle_minutes / 60.0,
        busy_gpu_hours: busy_h,
        energy_per_busy_gpu_hour_kwh: (busy_h > 0.0).then(|| kwh(a.gpu_j) / busy_h),
        gpu_util_mean_pct: (a.gpu_covered > 0.0).then(|| a.gpu_util_sum / a.gpu_covered),
        power_throttled_hours: a.power_throttle_s / 3600.0,
        thermal_throttled_hours: a.thermal_throttle_s / 3600.0,
        coverage_pct: (a.expected > 0.0).then(|| (100.0 * a.covered / a.expected).min(100.0)),
        counter_resets: a.resets,
        prev_week_it_energy_kwh: (a.prev_it_j > 0.0).then(|| kwh(a.prev_it_j)),
        wow_change_pct: (a.prev_it_j > 0.0)
            .then(|| 100.0 * (it - kwh(a.prev_it_j)) / kwh(a.prev_it_j)),
    }
}

/// `x` rounded to twelve significant digits: a ratio of sums reads 1.4, not
/// 1.4000000000000001.
pub(crate) fn digits12(x: f64) -> f64 {
    format!("{x:.11e}").parse().unwrap_or(x)
}

/// kWh for a note: one decimal, or three below 0.1 (so 0.008 does not read as 0.0).
fn small_kwh(x: f64) -> String {
    if x < 0.1 {
        format!("{x:.3}")
    } else {
        format!("{x:.1}")
    }
}

/// Idle share above which a GPU is a consolidation candidate.
const IDLE_SHARE: f64 = 0.5;
/// Power-cap candidates: low mean utilization, yet peaks near the power limit.
const CAP_UTIL_PCT: f64 = 40.0;
const CAP_PEAK_SHARE: f64 = 0.8;
const CAP_SUGGESTED_SHARE: f64 = 0.7;

fn recommend(
    r: &mut EnergyReport,
    power_max: &HashMap<Entity, f64>,
    power_limit: &HashMap<Entity, f64>,
    hosts: &[HostInfo],
) {
    let total = r.total().clone();
    // Consolidation, per pool; the idle cost per currency (a pool may span sites that
    // pay in different ones).
    type PoolIdle = (u32, u32, f64, BTreeMap<String, f64>);
    let mut by_pool: BTreeMap<String, PoolIdle> = BTreeMap::new();
    for g in r.level("gpu") {
        let e = by_pool.entry(g.pool.clone()).or_default();
        e.1 += 1;
        let covered = g.idle_gpu_hours + g.busy_gpu_hours;
        if covered > 0.0 && g.idle_gpu_hours / covered >= IDLE_SHARE {
            e.0 += 1;
            e.2 += g.idle_gpu_energy_kwh;
            *e.3.entry(g.currency.clone()).or_default() += g.idle_gpu_cost.unwrap_or(0.0);
        }
    }
    for (pool, (idle, n, kwh, cost)) in &by_pool {
        if *idle > 0 {
            let pool = if pool.is_empty() { "(no pool)" } else { pool };
            let money = cost
                .iter()
                .map(|(currency, c)| format!("{c:.2} {currency}"))
                .collect::<Vec<_>>()
                .join(" + ");
            r.actions.push(Action {
                title: format!("Consolidate idle GPUs in pool {pool}"),
                detail: format!(
                    "{idle} of {n} GPUs were idle (below {}% utilization) more than half of the time they reported, using {kwh:.1} kWh while idle ({money}). Pack work onto fewer GPUs and release or power down the rest.",
                    r.idle_util_pct,
                ),
            });
        }
    }
    // Power caps.
    let mut caps = Vec::new();
    for g in r.level("gpu") {
        let Some(i) = g.gpu_index else { continue };
        let Some(h) = hosts.iter().find(|h| h.name == g.host) else {
            continue;
        };
        let e = (h.id, i as i16);
        if let (Some(peak), Some(limit), Some(util)) =
            (power_max.get(&e), power_limit.get(&e), g.gpu_util_mean_pct)
        {
            if util < CAP_UTIL_PCT && g.busy_gpu_hours > 1.0 && *peak >= CAP_PEAK_SHARE * limit {
                caps.push(format!(
                    "{} GPU {i} (mean {util:.0}% utilization, peak {peak:.0} W of {limit:.0} W: try {:.0} W)",
                    g.host,
                    CAP_SUGGESTED_SHARE * limit
                ));
            }
        }
    }
    if !caps.is_empty() {
        let n = caps.len();
        caps.truncate(10);
        r.actions.push(Action {
            title: format!("Lower the power cap of {}", count(n, "lightly used GPU")),
            detail: format!(
                "These GPUs averaged under {CAP_UTIL_PCT:.0}% utilization yet drew close to their power limit: {}{}. A cap at about {:.0}% of the limit trims their peaks; compare job throughput before and after.",
                caps.join("; "),
                if n > 10 { "; …" } else { "" },
                CAP_SUGGESTED_SHARE * 100.0
            ),
        });
    }
    // Heat.
    let hot: Vec<String> = r
        .level("gpu")
        .filter(|g| g.thermal_throttled_hours >= 1.0)
        .map(|g| {
            format!(
                "{} GPU {} ({:.1} h)",
                g.host,
                g.gpu_index.unwrap_or(-1),
                g.thermal_throttled_hours
            )
        })
        .collect();
    if !hot.is_empty() {
        r.actions.push(Action {
            title: format!("Check cooling of {} throttled by heat", count(hot.len(), "GPU")),
            detail: format!(
                "Thermal slowdown for an hour or more this week: {}. Heat throttling wastes energy per unit of work; check fans, airflow and inlet temperature.",
                hot.join(", ")
            ),
        });
    }
    // Notes on how far to trust the figures.
    if let Some(c) = total.coverage_pct {
        let low: Vec<String> = r
            .level("host")
            .filter(|h| h.coverage_pct.is_some_and(|c| c < 95.0))
            .map(|h| h.host.clone())
            .collect();
        // A host under 95 % is named even when the fleet's figure rounds to complete.
        if c < 99.5 || !low.is_empty() {
            r.notes.push(format!(
                "Coverage {c:.1}% of expected samples.{}",
                if low.is_empty() {
                    String::new()
                } else {
                    format!(
                        " Below 95%: {} (their estimated and modeled energy undercounts; counter-measured GPU energy does not).",
                        low.join(", ")
                    )
                }
            ));
        }
    }
    if total.counter_resets > 0 {
        r.notes.push(format!(
            "{} energy counter steps backwards were seen: a reset (driver reload, GPU reset) counts from zero; a jump no GPU could draw (two senders for one GPU, GPUs renumbered) is estimated from power.",
            total.counter_resets
        ));
    }
    if total.estimated_energy_kwh > 0.0 {
        r.notes.push(format!(
            "{} kWh of GPU energy are estimated from sampled power: minutes with no energy counter delta (GPUs without a counter, a counter's first reading, the first reading after a gap or a reset).",
            small_kwh(total.estimated_energy_kwh)
        ));
    }
    if total.modeled_energy_kwh > 0.0 {
        r.notes.push(format!(
            "{:.1} kWh of host (non-GPU) energy are modeled from CPU utilization; hosts that expose RAPL are measured.",
            total.modeled_energy_kwh
        ));
    }
    // Days of the week (up to the accounted hours) without any energy: the totals cover
    // the other days only.
    let started = r
        .accounted_until
        .map_or(0, |t| {
            ((t - r.start).num_hours().max(0) as f64 / 24.0).ceil() as usize
        })
        .min(r.days.len());
    let empty: Vec<&str> = r.days[..started]
        .iter()
        .filter(|d| d.gpu_busy_kwh + d.gpu_idle_kwh + d.host_kwh <= 0.0)
        .map(|d| d.date.as_str())
        .collect();
    if !empty.is_empty() && empty.len() < started {
        r.notes.push(format!(
            "No energy was accounted on {} (no host reported then): the totals cover {} of the week's {} days.",
            empty.join(", "),
            started - empty.len(),
            if started == r.days.len() {
                "7".to_string()
            } else {
                format!("{started} accounted")
            }
        ));
    }
    if r.no_data() {
        r.notes.push(
            "No data in this week: nothing was accounted (no host reported then, or its samples are past retention)."
                .into(),
        );
    }
    if r.partial() {
        r.notes.push(match r.accounted_until {
            Some(t) if t > r.start => format!(
                "Partial week: accounted up to {}.",
                t.with_timezone(&r.time_zone.parse::<Tz>().unwrap_or(chrono_tz::UTC))
                    .format("%Y-%m-%d %H:%M %Z")
            ),
            _ => "No accounted hours in this week yet.".into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(metered: usize, it_hours: i64, implausible: Vec<f64>) -> SiteHours {
        SiteHours {
            cfg: SiteEnergy::default(),
            meter_j: HashMap::new(),
            carbon: HashMap::new(),
            it_j: (0..it_hours).map(|h| (h, 1.0)).collect(),
            fallback_pue: 1.4,
            implausible,
            metered_hours: metered,
            partly_metered: 0,
        }
    }

    #[test]
    fn the_default_week_is_last_week_unless_the_running_week_holds_more() {
        let running: IsoWeek = "2026-W49".parse().unwrap();
        let last = running.prev();
        assert_eq!(choose_week(last, 7, running, 6), last);
        assert_eq!(choose_week(last, 3, running, 3), last);
        // A new install: last week's last day only, or nothing at all.
        assert_eq!(choose_week(last, 1, running, 5), running);
        assert_eq!(choose_week(last, 0, running, 0), running);
    }

    #[test]
    fn meter_notes_say_what_was_left_out_and_when_the_configured_pue_stands() {
        let sites = HashMap::from([
            ("fra1".to_string(), site(0, 168, vec![0.046])),
            ("ams2".to_string(), site(3, 100, Vec::new())),
            ("par1".to_string(), site(30, 100, vec![7.5, 0.2])),
            ("lon1".to_string(), site(100, 100, Vec::new())),
        ]);
        assert_eq!(
            meter_notes(&sites),
            [
                "Site ams2: facility readings cover 3 hours of this week; its other hours use the configured PUE 1.40 (a measured PUE stands for the other hours once readings cover 24 h).",
                "Site fra1: facility readings of 1 hour left out: they give a PUE of 0.05, and a facility draws 1 to 5 times its IT energy. Those hours use the PUE 1.40. Check the meter and the readings' start and end.",
                "Site par1: facility readings of 2 hours left out: they give a PUE of 0.20 to 7.50, and a facility draws 1 to 5 times its IT energy. Those hours use the PUE 1.40. Check the meter and the readings' start and end.",
            ]
        );
    }
}
