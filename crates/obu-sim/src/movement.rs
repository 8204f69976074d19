//! How a simulated vehicle moves: routes of random waypoints inside the area, driven at speeds
//! that accelerate and brake within limits, heading along the route, stops at each route's end,
//! and a few metres of GPS noise on what is reported. Pure and seeded: the same seed and the
//! same time steps give the same track.

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use fleetstream_core::position::{bearing_deg, distance_m};

use crate::config::Area;

/// Metres per degree of latitude.
const M_PER_DEG: f64 = 111_320.0;

/// Movement limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_speed_ms: f64,
    pub max_accel: f64,
    pub max_decel: f64,
    pub noise_m: f64,
}

/// A reported fix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fix {
    pub lat: f64,
    pub lon: f64,
    /// km/h
    pub speed: f64,
    /// degrees
    pub heading: f64,
    /// Ignition, where the model knows it: off while parked.
    pub ignition: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct Vehicle {
    area: Area,
    limits: Limits,
    rng: StdRng,
    lat: f64,
    lon: f64,
    speed: f64,
    heading: f64,
    cruise: f64,
    route: Vec<(f64, f64)>,
    next: usize,
    stopped_for: f64,
    /// A long stop with the ignition off (which ends a trip), not a short halt.
    parked: bool,
}

impl Vehicle {
    pub fn new(area: Area, limits: Limits, seed: u64, obu_id: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ obu_id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (lat, lon) = area.random_point(&mut rng);
        let mut v = Vehicle {
            area,
            limits,
            lat,
            lon,
            speed: 0.0,
            heading: 0.0,
            cruise: 0.0,
            route: Vec::new(),
            next: 0,
            stopped_for: 0.0,
            parked: false,
            rng,
        };
        v.new_route();
        v
    }

    fn new_route(&mut self) {
        let n = self.rng.random_range(2..6);
        self.route = (0..n).map(|_| self.area.random_point(&mut self.rng)).collect();
        self.next = 0;
        self.cruise = self.limits.max_speed_ms * self.rng.random_range(0.5..=1.0);
    }

    /// Moves the vehicle `dt` seconds on and returns its (noisy) fix.
    pub fn advance(&mut self, dt: f64) -> Fix {
        let mut left = dt;
        // Small steps keep acceleration and braking smooth whatever the report interval.
        while left > 0.0 {
            let step = left.min(0.25);
            self.step(step);
            left -= step;
        }
        let noise = self.limits.noise_m;
        let (dn, de) = (self.rng.random_range(-noise..=noise), self.rng.random_range(-noise..=noise));
        let (lat, lon) = self.area.clamp(self.lat + dn / M_PER_DEG, self.lon + de / (M_PER_DEG * self.lat.to_radians().cos()));
        Fix { lat, lon, speed: self.speed * 3.6, heading: self.heading, ignition: Some(!self.parked) }
    }

    fn step(&mut self, dt: f64) {
        if self.stopped_for > 0.0 {
            self.speed = 0.0;
            self.stopped_for -= dt;
            if self.stopped_for <= 0.0 {
                self.parked = false;
                self.new_route();
            }
            return;
        }
        let (tlat, tlon) = self.route[self.next];
        let to_target = distance_m(self.lat, self.lon, tlat, tlon);
        let arrival_speed = self.arrival_speed(self.next);
        // Plan braking at 3/4 of the strongest deceleration, so the discrete steps can always
        // follow the plan (and never need more than max_decel to stop in time).
        let braking_limit = (arrival_speed * arrival_speed + 1.5 * self.limits.max_decel * to_target).sqrt();
        let wanted = self.cruise.min(braking_limit);
        self.speed = if wanted > self.speed {
            (self.speed + self.limits.max_accel * dt).min(wanted)
        } else {
            (self.speed - self.limits.max_decel * dt).max(wanted).max(0.0)
        };
        if to_target > 0.5 {
            self.heading = bearing_deg(self.lat, self.lon, tlat, tlon);
        }
        let travel = self.speed * dt;
        if travel >= to_target || to_target < 1.0 {
            self.lat = tlat;
            self.lon = tlon;
            let last = self.next + 1 == self.route.len();
            if last && self.speed > 0.0 {
                // At the end of the route but still rolling: brake to a halt on the spot.
                return;
            }
            self.next += 1;
            if self.next == self.route.len() {
                self.speed = 0.0;
                // One route end in five is the end of a trip: parked for minutes, ignition off.
                self.parked = self.rng.random_bool(0.2);
                self.stopped_for = if self.parked { self.rng.random_range(360.0..900.0) } else { self.rng.random_range(5.0..30.0) };
                self.next = self.route.len() - 1;
            }
        } else {
            let h = self.heading.to_radians();
            self.lat += travel * h.cos() / M_PER_DEG;
            self.lon += travel * h.sin() / (M_PER_DEG * self.lat.to_radians().cos());
        }
    }

    /// The speed the vehicle may have on reaching waypoint `i`: zero at the route's end, slow
    /// for a corner otherwise, and never so fast that a short leg after it cannot be braked.
    fn arrival_speed(&self, i: usize) -> f64 {
        if i + 1 >= self.route.len() {
            return 0.0;
        }
        let (a, b) = (self.route[i], self.route[i + 1]);
        let leg = distance_m(a.0, a.1, b.0, b.1);
        let after = self.arrival_speed(i + 1);
        (self.cruise * 0.4).min((after * after + 1.5 * self.limits.max_decel * leg).sqrt())
    }

    /// A random number from the vehicle's own stream (fault and jitter decisions).
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { max_speed_ms: 90.0 / 3.6, max_accel: 2.5, max_decel: 4.0, noise_m: 3.0 }
    }

    fn berlin() -> Area {
        crate::config::Config::defaults().area
    }

    fn track(seed: u64, obu: u64, steps: usize) -> Vec<Fix> {
        let mut v = Vehicle::new(berlin(), limits(), seed, obu);
        (0..steps).map(|_| v.advance(1.0)).collect()
    }

    #[test]
    fn vehicles_stay_inside_and_move_plausibly() {
        let berlin = berlin();
        for obu in 1..=20 {
            let fixes = track(7, obu, 3600);
            for f in &fixes {
                assert!(berlin.contains(f.lat, f.lon), "{f:?} outside");
                assert!(f.speed <= 90.0 + 1e-9, "reported speed {}", f.speed);
            }
            for w in fixes.windows(2) {
                let d = distance_m(w[0].lat, w[0].lon, w[1].lat, w[1].lon);
                // 1 s apart: the true move is at most 25 m; noise adds at most ~8.5 m per fix.
                assert!(d <= 25.0 + 2.0 * 3.0 * 2f64.sqrt() + 0.5, "jump of {d} m");
                assert!((w[1].speed - w[0].speed).abs() / 3.6 <= 4.0 + 1e-9, "acceleration too hard: {:?}", (w[0], w[1]));
            }
            assert!(fixes.iter().any(|f| f.speed == 0.0), "vehicle {obu} never stopped");
            assert!(fixes.iter().any(|f| f.speed > 30.0), "vehicle {obu} never got going");
        }
    }

    #[test]
    fn same_seed_same_track_other_seed_other_track() {
        assert_eq!(track(42, 3, 300), track(42, 3, 300));
        assert_ne!(track(42, 3, 300), track(43, 3, 300));
        assert_ne!(track(42, 3, 300), track(42, 4, 300));
    }
}
