//! Point-in-fence cost: times `FenceIndex::containing` at 10, 1,000 and 10,000 polygon fences
//! (20 vertices each, irregular, one every 700 m on a grid over Berlin: 1,000 fences cover a
//! 22 km square), for points far from every fence, between fences and inside one. "Inside, hot"
//! keeps to 10 fences, so their data stays in cache: the gap to "inside one" is memory, not
//! work. A linear scan over every fence is timed alongside, to show what the R-tree saves. Each
//! figure is the fastest of `--rounds`, as other work on the machine only ever adds time.
//!
//! `cargo run --release -p fleetstream-bench --bin geofence-bench`

use std::hint::black_box;
use std::time::Instant;

use clap::Parser;
use fleetstream_core::geofence::{Fence, FenceIndex};
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// Lookups timed per kind of point and fence count.
    #[arg(long, default_value_t = 1_000_000)]
    lookups: usize,
    /// Lookups the linear scan may cost in all (fences x points), per fence count.
    #[arg(long, default_value_t = 100_000_000)]
    scan_budget: usize,
    /// Rounds per figure; the fastest is shown.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// One JSON array of rows (for scripts/bench) instead of the table.
    #[arg(long)]
    json: bool,
}

/// Grid step between fence centres, degrees of latitude (about 700 m).
const STEP_LAT: f64 = 0.0063;
/// The same in longitude at 52.5° N.
const STEP_LON: f64 = 0.0103;
const VERTICES: usize = 20;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.json {
        println!(
            "ns per containing() lookup, fastest of {} rounds of {} lookups; last column: testing every fence",
            args.rounds, args.lookups
        );
        println!(
            "{:>7} {:>9} {:>9} {:>9} {:>11} {:>12} {:>12}",
            "fences", "build ms", "far away", "between", "inside one", "inside, hot", "linear scan"
        );
    }
    let mut rows = Vec::new();
    for count in [10, 1_000, 10_000] {
        let mut rng = Rng(0x5EED ^ count as u64);
        let fences = fences(count, &mut rng)?;
        let started = Instant::now();
        let index = FenceIndex::new(fences.clone());
        let build_ms = started.elapsed().as_secs_f64() * 1e3;

        let side = grid_side(count) as f64;
        let area = |rng: &mut Rng| (52.4 + rng.unit() * side * STEP_LAT, 13.2 + rng.unit() * side * STEP_LON);
        let far: Vec<(f64, f64)> =
            (0..args.lookups).map(|_| (rng.range(40.0, 41.0), rng.range(-4.0, -3.0))).collect();
        let between: Vec<(f64, f64)> = std::iter::repeat_with(|| area(&mut rng))
            .filter(|&(lat, lon)| index.containing(lat, lon).is_empty())
            .take(args.lookups)
            .collect();
        let near_centre = |rng: &mut Rng, among: usize| {
            let (lat, lon) = centre(rng.below(among), count);
            // Within 100 m of a centre: every fence reaches at least 150 m out.
            (lat + rng.range(-0.0006, 0.0006), lon + rng.range(-0.0009, 0.0009))
        };
        let inside: Vec<(f64, f64)> = (0..args.lookups).map(|_| near_centre(&mut rng, count)).collect();
        let hot: Vec<(f64, f64)> = (0..args.lookups).map(|_| near_centre(&mut rng, count.min(10))).collect();

        let best = |points: &[(f64, f64)], lookup: &dyn Fn(f64, f64) -> usize, expect: usize| {
            let mut fastest = f64::INFINITY;
            for _ in 0..args.rounds.max(1) {
                let started = Instant::now();
                let hits: usize =
                    points.iter().map(|&(lat, lon)| lookup(black_box(lat), black_box(lon))).sum();
                fastest = fastest.min(started.elapsed().as_nanos() as f64 / points.len() as f64);
                anyhow::ensure!(hits == expect * points.len(), "{hits} hits for {} points", points.len());
            }
            Ok(fastest)
        };
        let indexed = |lat, lon| index.containing(lat, lon).len();
        let (far_ns, between_ns) = (best(&far, &indexed, 0)?, best(&between, &indexed, 0)?);
        let (inside_ns, hot_ns) = (best(&inside, &indexed, 1)?, best(&hot, &indexed, 1)?);
        let scanned = &inside[..(args.scan_budget / count).clamp(1, inside.len())];
        let scan = |lat, lon| fences.iter().filter(|f| f.contains(lat, lon)).count();
        let scan_ns = best(scanned, &scan, 1)?;

        if args.json {
            rows.push(json!({"fences": count, "build_ms": build_ms, "far_ns": far_ns, "between_ns": between_ns,
                "inside_ns": inside_ns, "hot_ns": hot_ns, "scan_ns": scan_ns}));
        } else {
            println!(
                "{count:>7} {build_ms:>9.1} {far_ns:>9.0} {between_ns:>9.0} {inside_ns:>11.0} {hot_ns:>12.0} {scan_ns:>12.0}"
            );
        }
    }
    if args.json {
        println!("{}", serde_json::Value::Array(rows));
    }
    Ok(())
}

fn grid_side(count: usize) -> usize {
    (count as f64).sqrt().ceil() as usize
}

/// Where fence `i` of `count` is centred: row-major on the grid, from the south-west corner.
fn centre(i: usize, count: usize) -> (f64, f64) {
    let side = grid_side(count);
    (52.4 + ((i / side) as f64 + 0.5) * STEP_LAT, 13.2 + ((i % side) as f64 + 0.5) * STEP_LON)
}

/// `count` irregular 20-gons, 150 to 300 m from centre to vertex, so none overlap, through the
/// same GeoJSON parsing and validation a fence from the API goes through.
fn fences(count: usize, rng: &mut Rng) -> anyhow::Result<Vec<Fence>> {
    (0..count)
        .map(|i| {
            let (lat, lon) = centre(i, count);
            let mut ring: Vec<[f64; 2]> = (0..VERTICES)
                .map(|v| {
                    let angle = v as f64 * std::f64::consts::TAU / VERTICES as f64;
                    let metres = rng.range(150.0, 300.0);
                    let (dlat, dlon) = (metres / 111_195.0, metres / (111_195.0 * lat.to_radians().cos()));
                    [lon + dlon * angle.cos(), lat + dlat * angle.sin()]
                })
                .collect();
            ring.push(ring[0]);
            let feature = json!({
                "type": "Feature",
                "id": format!("fence-{i:05}"),
                "properties": { "name": format!("Fence {i}") },
                "geometry": { "type": "Polygon", "coordinates": [ring] },
            });
            Ok(Fence::from_feature(&feature, None)?)
        })
        .collect()
}

/// xorshift64*: reproducible points without a dependency.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn range(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }

    fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n.saturating_sub(1))
    }
}
