//! Geofences: named areas (polygons with holes, or circles) a vehicle enters and leaves.
//!
//! A fence is written as one GeoJSON Feature (RFC 7946, coordinates `[lon, lat]` in WGS84
//! degrees). Its geometry is a `Polygon`, a `MultiPolygon`, or a `Point` with
//! `properties.radius_m` (a circle). [`Fence::from_feature`] parses and validates it, and
//! [`FenceError`] says in one line what is wrong and where, fit for an HTTP 400/422 body.
//!
//! [`FenceIndex`] answers "which fences hold this point" through an R-tree of bounding boxes, so a
//! point far from every fence costs a tree descent, not a test per fence.
//!
//! Boundaries count as inside: a point exactly on a polygon edge (outer ring or hole) is in the
//! fence, as is a point exactly `radius_m` from a circle's centre. A vehicle driving along a fence
//! edge then stays in, rather than flickering in and out on rounding.

use std::collections::{BTreeMap, HashMap};

use geo::algorithm::validation::{InvalidMultiPolygon, InvalidPolygon, RingRole, Validation};
use geo::{Coord, CoordsIter, Intersects, LineString, MultiPolygon, Polygon};
use rstar::primitives::{GeomWithData, Rectangle};
use rstar::{Envelope, RTree, AABB};
use serde_json::{json, Map, Value};

use crate::position::distance_m;

/// Longest fence id: it ends up in event ids, Kafka headers and URL paths.
pub const MAX_ID_LEN: usize = 128;
/// Longest fence name, in characters.
pub const MAX_NAME_LEN: usize = 200;
/// Highest speed limit a fence may set, km/h.
pub const MAX_SPEED_LIMIT_KMH: f64 = 300.0;
/// Largest circle radius, metres: beyond that a polygon says better what is meant.
pub const MAX_RADIUS_M: f64 = 100_000.0;
/// Most positions in one fence. Fences come in over HTTP and `geo`'s ring validation is quadratic
/// in a ring's length: 2,000 positions take tens of milliseconds (release build), 5,000 already
/// about 200. Hand-drawn fences need far fewer; a traced boundary can be simplified first.
pub const MAX_POSITIONS: usize = 2_000;

/// Where a geometry's coordinates start, in error messages.
const COORDS: &str = "geometry.coordinates";
/// Metres per degree of latitude on the sphere [`distance_m`] uses (radius 6 371 008.8 m).
const M_PER_DEG_LAT: f64 = 6_371_008.8 * std::f64::consts::PI / 180.0;
/// Widening of a circle's box, degrees (about 1 mm): keeps a point exactly on the circle inside
/// the box despite rounding in the trigonometry.
const BOX_MARGIN_DEG: f64 = 1e-8;

/// Why a GeoJSON fence was refused. `Display` is one line naming the problem and where it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FenceError {
    #[error("not a GeoJSON Feature ({0})")]
    NotAFeature(String),
    #[error("not a GeoJSON FeatureCollection ({0})")]
    NotACollection(String),
    #[error("{0} is required")]
    Missing(String),
    #[error("{path} must be {expected}, got {found}")]
    WrongType { path: String, expected: &'static str, found: String },
    #[error("id must not be empty")]
    EmptyId,
    #[error("id has {0} characters; at most {max} are allowed", max = MAX_ID_LEN)]
    IdTooLong(usize),
    #[error("id contains {0:?}; only A-Z, a-z, 0-9, '.', '_' and '-' are allowed")]
    IdCharacter(char),
    #[error("properties.name must not be empty")]
    EmptyName,
    #[error("properties.name has {0} characters; at most {max} are allowed", max = MAX_NAME_LEN)]
    NameTooLong(usize),
    #[error("{path} is {value}; it must be > 0 and <= {max}")]
    OutOfRange { path: &'static str, value: f64, max: f64 },
    #[error("properties.radius_m only applies to a Point geometry (a circle), not a {0}")]
    RadiusOnPolygon(String),
    #[error("unsupported geometry type {0}; use Polygon, MultiPolygon, or Point with properties.radius_m")]
    UnsupportedGeometry(String),
    #[error("{0} must hold at least one {1}")]
    Empty(String, &'static str),
    #[error("longitude {value} is outside [-180, 180] at {path}")]
    Longitude { value: f64, path: String },
    #[error("latitude {value} is outside [-90, 90] at {path}")]
    Latitude { value: f64, path: String },
    #[error("ring at {path} has {count} positions; a linear ring needs at least 4")]
    RingTooShort { path: String, count: usize },
    #[error("ring at {path} is not closed: first position {first} differs from last {last}")]
    RingNotClosed { path: String, first: String, last: String },
    #[error("ring at {0} has fewer than 3 distinct positions")]
    RingDegenerate(String),
    #[error("self-intersecting ring at {0}")]
    SelfIntersecting(String),
    #[error("hole at {hole} is not inside the outer ring at {outer}")]
    HoleOutside { hole: String, outer: String },
    #[error("rings at {a} and {b} {how}")]
    RingsIntersect { a: String, b: String, how: &'static str },
    #[error("polygons at {a} and {b} {how}")]
    PolygonsIntersect { a: String, b: String, how: &'static str },
    #[error("geometry has {0} positions; at most {max} are allowed", max = MAX_POSITIONS)]
    TooManyPositions(usize),
    #[error("geometry spans {0} degrees of longitude; fences across the antimeridian are not supported")]
    LongitudeSpan(f64),
    #[error("circle at geometry.coordinates crosses the antimeridian; fences across it are not supported")]
    CircleAcrossAntimeridian,
    #[error("features[{index}]: duplicate id {id:?} (first used by features[{first}])")]
    DuplicateId { index: usize, id: String, first: usize },
    #[error("features[{index}]: {source}")]
    InFeature { index: usize, source: Box<FenceError> },
}

/// One fence.
#[derive(Debug, Clone, PartialEq)]
pub struct Fence {
    /// Unique among fences: 1 to 128 characters of `[A-Za-z0-9._-]`.
    pub id: String,
    /// What people call it, for the UI and event payloads.
    pub name: String,
    /// Speed limit inside, km/h; overrides the global limit.
    pub speed_limit_kmh: Option<f64>,
    shape: Shape,
    /// The GeoJSON geometry as given, so [`Fence::to_feature`] hands back what was stored.
    geometry: Value,
    /// Bounding box, `[lon, lat]` degrees: the key of the fence in [`FenceIndex`].
    bbox: AABB<[f64; 2]>,
}

#[derive(Debug, Clone, PartialEq)]
enum Shape {
    /// A Polygon is kept as a MultiPolygon of one, so both polygon types share one test.
    Polygons(MultiPolygon<f64>),
    Circle {
        lat: f64,
        lon: f64,
        radius_m: f64,
    },
}

impl Fence {
    /// Whether the point (WGS84 degrees) is in the fence; boundaries count as inside.
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        // The box test is cheap, and it refuses NaN before the exact tests see it.
        if !self.bbox.contains_point(&[lon, lat]) {
            return false;
        }
        match &self.shape {
            // Polygon by polygon: `MultiPolygon::intersects` would first recompute its bounding box
            // from every vertex, on each call, though `bbox` has already answered that.
            Shape::Polygons(area) => area.iter().any(|p| p.intersects(&Coord { x: lon, y: lat })),
            Shape::Circle { lat: clat, lon: clon, radius_m } => {
                distance_m(lat, lon, *clat, *clon) <= *radius_m
            }
        }
    }

    /// Reads one GeoJSON Feature. `id`, when given (the id in an API path), wins over the
    /// Feature's own `id`, which is then not read at all.
    pub fn from_feature(value: &Value, id: Option<&str>) -> Result<Fence, FenceError> {
        let feature =
            value.as_object().ok_or_else(|| FenceError::NotAFeature(format!("got {}", kind(value))))?;
        match feature.get("type") {
            Some(Value::String(t)) if t == "Feature" => {}
            // Escaped: the message is one line (a log line, a 422 body) whatever the input holds.
            Some(Value::String(t)) => return Err(FenceError::NotAFeature(format!("type is {}", t.escape_debug()))),
            Some(other) => return Err(FenceError::NotAFeature(format!("type is {other}"))),
            None => return Err(FenceError::NotAFeature("type is missing".into())),
        }
        let id = match id {
            Some(id) => id.to_owned(),
            None => feature_id(feature.get("id"))?,
        };
        check_id(&id)?;

        let empty = Map::new();
        let properties = match feature.get("properties") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(p)) => p,
            Some(other) => return Err(wrong_type("properties", "an object", other)),
        };
        let name = match properties.get("name") {
            None | Some(Value::Null) => return Err(FenceError::Missing("properties.name".into())),
            Some(Value::String(name)) => name.clone(),
            Some(other) => return Err(wrong_type("properties.name", "a string", other)),
        };
        if name.trim().is_empty() {
            return Err(FenceError::EmptyName);
        }
        let chars = name.chars().count();
        if chars > MAX_NAME_LEN {
            return Err(FenceError::NameTooLong(chars));
        }
        let speed_limit_kmh = positive_number(
            properties,
            "speed_limit_kmh",
            "properties.speed_limit_kmh",
            MAX_SPEED_LIMIT_KMH,
        )?;
        let radius_m = positive_number(properties, "radius_m", "properties.radius_m", MAX_RADIUS_M)?;

        let geometry = match feature.get("geometry") {
            None | Some(Value::Null) => return Err(FenceError::Missing("geometry".into())),
            Some(g) => g,
        };
        let (shape, bbox) = parse_geometry(geometry, radius_m)?;
        Ok(Fence { id, name, speed_limit_kmh, shape, geometry: geometry.clone(), bbox })
    }

    /// The fence as a GeoJSON Feature, which [`Fence::from_feature`] reads back to an equal fence.
    /// The geometry is the one given; of the properties, only those a fence reads are kept.
    pub fn to_feature(&self) -> Value {
        let mut properties = Map::new();
        properties.insert("name".into(), json!(self.name));
        if let Some(limit) = self.speed_limit_kmh {
            properties.insert("speed_limit_kmh".into(), json!(limit));
        }
        if let Shape::Circle { radius_m, .. } = self.shape {
            properties.insert("radius_m".into(), json!(radius_m));
        }
        json!({
            "type": "Feature",
            "id": self.id,
            "properties": properties,
            "geometry": self.geometry,
        })
    }
}

/// Reads a GeoJSON FeatureCollection of fences. Every feature needs its own id, and ids must be
/// unique: a second fence with the same id would silently replace the first in a [`FenceIndex`].
pub fn parse_collection(value: &Value) -> Result<Vec<Fence>, FenceError> {
    let collection =
        value.as_object().ok_or_else(|| FenceError::NotACollection(format!("got {}", kind(value))))?;
    match collection.get("type") {
        Some(Value::String(t)) if t == "FeatureCollection" => {}
        Some(Value::String(t)) => return Err(FenceError::NotACollection(format!("type is {}", t.escape_debug()))),
        Some(other) => return Err(FenceError::NotACollection(format!("type is {other}"))),
        None => return Err(FenceError::NotACollection("type is missing".into())),
    }
    let features = match collection.get("features") {
        Some(Value::Array(features)) => features,
        Some(other) => return Err(wrong_type("features", "an array", other)),
        None => return Err(FenceError::Missing("features".into())),
    };
    let mut first_use: HashMap<String, usize> = HashMap::new();
    let mut fences = Vec::with_capacity(features.len());
    for (index, feature) in features.iter().enumerate() {
        let fence = Fence::from_feature(feature, None)
            .map_err(|e| FenceError::InFeature { index, source: Box::new(e) })?;
        if let Some(&first) = first_use.get(&fence.id) {
            return Err(FenceError::DuplicateId { index, id: fence.id, first });
        }
        first_use.insert(fence.id.clone(), index);
        fences.push(fence);
    }
    Ok(fences)
}

/// Every fence, indexed for "which fences hold this point".
#[derive(Debug, Default)]
pub struct FenceIndex {
    /// Sorted by id, for [`FenceIndex::get`] by binary search.
    fences: Vec<Fence>,
    /// Bounding boxes, `[lon, lat]`, each tagged with its fence's position in `fences`.
    tree: RTree<GeomWithData<Rectangle<[f64; 2]>, usize>>,
}

impl FenceIndex {
    /// Indexes the fences; of two with the same id, the later one is kept.
    pub fn new(fences: impl IntoIterator<Item = Fence>) -> FenceIndex {
        let fences: Vec<Fence> =
            fences.into_iter().map(|f| (f.id.clone(), f)).collect::<BTreeMap<_, _>>().into_values().collect();
        let boxes = fences
            .iter()
            .enumerate()
            .map(|(i, f)| GeomWithData::new(Rectangle::from_aabb(f.bbox), i))
            .collect();
        FenceIndex { fences, tree: RTree::bulk_load(boxes) }
    }

    /// The fences holding the point, sorted by id.
    pub fn containing(&self, lat: f64, lon: f64) -> Vec<&Fence> {
        let mut hits: Vec<&Fence> = self
            .tree
            .locate_all_at_point(&[lon, lat])
            .filter_map(|entry| self.fences.get(entry.data))
            .filter(|f| f.contains(lat, lon))
            .collect();
        hits.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        hits
    }

    /// The fence with this id.
    pub fn get(&self, id: &str) -> Option<&Fence> {
        let i = self.fences.binary_search_by(|f| f.id.as_str().cmp(id)).ok()?;
        self.fences.get(i)
    }

    /// Every fence, sorted by id.
    pub fn iter(&self) -> impl Iterator<Item = &Fence> {
        self.fences.iter()
    }

    /// How many fences there are.
    pub fn len(&self) -> usize {
        self.fences.len()
    }

    /// Whether there are no fences.
    pub fn is_empty(&self) -> bool {
        self.fences.is_empty()
    }
}

/// The Feature's own id: GeoJSON allows a string or a number; integers are taken as text.
fn feature_id(value: Option<&Value>) -> Result<String, FenceError> {
    match value {
        None | Some(Value::Null) => Err(FenceError::Missing("id".into())),
        Some(Value::String(id)) => Ok(id.clone()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        Some(other) => Err(wrong_type("id", "a string or an integer", other)),
    }
}

/// Ids go into URL paths, event ids and Kafka headers, so they stay short and plain. The id itself
/// is left out of the messages: it may be long, and the caller knows which one it sent.
fn check_id(id: &str) -> Result<(), FenceError> {
    if id.is_empty() {
        return Err(FenceError::EmptyId);
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c))) {
        return Err(FenceError::IdCharacter(c));
    }
    // Only ASCII is left, so bytes are characters.
    if id.len() > MAX_ID_LEN {
        return Err(FenceError::IdTooLong(id.len()));
    }
    Ok(())
}

/// An optional number in `(0, max]`; null counts as absent.
fn positive_number(
    properties: &Map<String, Value>,
    key: &str,
    path: &'static str,
    max: f64,
) -> Result<Option<f64>, FenceError> {
    match properties.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64().unwrap_or(f64::NAN) {
            value if value > 0.0 && value <= max => Ok(Some(value)),
            value => Err(FenceError::OutOfRange { path, value, max }),
        },
        Some(other) => Err(wrong_type(path, "a number", other)),
    }
}

fn parse_geometry(geometry: &Value, radius_m: Option<f64>) -> Result<(Shape, AABB<[f64; 2]>), FenceError> {
    let object =
        geometry.as_object().ok_or_else(|| wrong_type("geometry", "a GeoJSON geometry object", geometry))?;
    let kind = match object.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(other) => return Err(wrong_type("geometry.type", "a string", other)),
        None => return Err(FenceError::Missing("geometry.type".into())),
    };
    if !matches!(kind, "Polygon" | "MultiPolygon" | "Point") {
        return Err(FenceError::UnsupportedGeometry(kind.escape_debug().to_string()));
    }
    let coordinates = object.get("coordinates").ok_or_else(|| FenceError::Missing(COORDS.into()))?;
    if kind == "Point" {
        let radius_m = radius_m.ok_or_else(|| FenceError::Missing("properties.radius_m".into()))?;
        let (lon, lat) = position(coordinates, || COORDS.to_owned())?;
        let bbox = circle_box(lat, lon, radius_m)?;
        return Ok((Shape::Circle { lat, lon, radius_m }, bbox));
    }
    if radius_m.is_some() {
        return Err(FenceError::RadiusOnPolygon(kind.to_owned()));
    }
    let area = MultiPolygon::new(if kind == "Polygon" {
        vec![polygon(coordinates, COORDS)?]
    } else {
        let members = non_empty_array(coordinates, COORDS, "polygon")?;
        members
            .iter()
            .enumerate()
            .map(|(i, p)| polygon(p, &format!("{COORDS}[{i}]")))
            .collect::<Result<Vec<_>, _>>()?
    });
    // Counted before validation, whose cost is quadratic in it.
    let count = area.coords_count();
    if count > MAX_POSITIONS {
        return Err(FenceError::TooManyPositions(count));
    }
    let bbox = polygons_box(&area)?;
    validate(&area, kind == "Polygon")?;
    Ok((Shape::Polygons(area), bbox))
}

/// One Polygon's rings, checked for shape (positions, closure, ranges) but not yet for topology.
fn polygon(value: &Value, path: &str) -> Result<Polygon<f64>, FenceError> {
    let rings = non_empty_array(value, path, "ring")?
        .iter()
        .enumerate()
        .map(|(i, r)| ring(r, &format!("{path}[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut rings = rings.into_iter();
    match rings.next() {
        Some(exterior) => Ok(Polygon::new(exterior, rings.collect())),
        None => Err(FenceError::Empty(path.to_owned(), "ring")),
    }
}

fn ring(value: &Value, path: &str) -> Result<LineString<f64>, FenceError> {
    let positions = match value {
        Value::Array(positions) => positions,
        other => return Err(wrong_type(path, "an array of positions", other)),
    };
    if positions.len() < 4 {
        return Err(FenceError::RingTooShort { path: path.to_owned(), count: positions.len() });
    }
    let coords = positions
        .iter()
        .enumerate()
        .map(|(i, p)| position(p, || format!("{path}[{i}]")).map(|(x, y)| Coord { x, y }))
        .collect::<Result<Vec<_>, _>>()?;
    if let (Some(first), Some(last)) = (coords.first(), coords.last()) {
        if first != last {
            return Err(FenceError::RingNotClosed {
                path: path.to_owned(),
                first: format!("[{}, {}]", first.x, first.y),
                last: format!("[{}, {}]", last.x, last.y),
            });
        }
    }
    Ok(LineString::new(coords))
}

/// A GeoJSON position: `[lon, lat]`, perhaps followed by an altitude, which a fence ignores. The
/// path is only made for an error: a fence has thousands of positions.
fn position(value: &Value, path: impl Fn() -> String) -> Result<(f64, f64), FenceError> {
    const EXPECTED: &str = "a position [lon, lat]";
    let numbers = match value {
        Value::Array(items) if items.len() >= 2 => {
            items.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>()
        }
        _ => None,
    };
    let (lon, lat) = match numbers.as_deref() {
        Some([lon, lat, ..]) => (*lon, *lat),
        _ => return Err(wrong_type(path(), EXPECTED, value)),
    };
    if !(-180.0..=180.0).contains(&lon) {
        return Err(FenceError::Longitude { value: lon, path: path() });
    }
    if !(-90.0..=90.0).contains(&lat) {
        return Err(FenceError::Latitude { value: lat, path: path() });
    }
    Ok((lon, lat))
}

fn non_empty_array<'a>(
    value: &'a Value,
    path: &str,
    member: &'static str,
) -> Result<&'a [Value], FenceError> {
    match value {
        Value::Array(items) if items.is_empty() => Err(FenceError::Empty(path.to_owned(), member)),
        Value::Array(items) => Ok(items),
        other => Err(wrong_type(path.to_owned(), "an array", other)),
    }
}

/// The box around the outer rings (holes lie inside them). A span over 180° almost always means a
/// fence drawn across the antimeridian, which a box in [-180, 180] cannot hold.
fn polygons_box(area: &MultiPolygon<f64>) -> Result<AABB<[f64; 2]>, FenceError> {
    let coords = area.iter().flat_map(|p| p.exterior().0.iter());
    let (mut lower, mut upper) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
    for c in coords {
        lower = [lower[0].min(c.x), lower[1].min(c.y)];
        upper = [upper[0].max(c.x), upper[1].max(c.y)];
    }
    let span = upper[0] - lower[0];
    if span > 180.0 {
        return Err(FenceError::LongitudeSpan(span));
    }
    Ok(AABB::from_corners(lower, upper))
}

/// The box around a circle. Its half-height is the radius in degrees of latitude; its half-width
/// grows as meridians converge, by the exact `asin(sin r / cos lat)` of a spherical cap, and
/// becomes every longitude when the circle holds a pole.
fn circle_box(lat: f64, lon: f64, radius_m: f64) -> Result<AABB<[f64; 2]>, FenceError> {
    let half_height = radius_m / M_PER_DEG_LAT;
    let (south, north) = ((lat - half_height).max(-90.0), (lat + half_height).min(90.0));
    let ratio = half_height.to_radians().sin() / lat.to_radians().cos();
    let (west, east) = if lat.abs() + half_height >= 90.0 || ratio >= 1.0 {
        (-180.0, 180.0)
    } else {
        let half_width = ratio.asin().to_degrees() + BOX_MARGIN_DEG;
        if lon - half_width < -180.0 || lon + half_width > 180.0 {
            return Err(FenceError::CircleAcrossAntimeridian);
        }
        (lon - half_width, lon + half_width)
    };
    Ok(AABB::from_corners(
        [west, (south - BOX_MARGIN_DEG).max(-90.0)],
        [east, (north + BOX_MARGIN_DEG).min(90.0)],
    ))
}

/// OGC validity through `geo`: simple rings, holes inside the outer ring, parts that do not
/// overlap. Without it, point-in-polygon answers for a bow-tie or an overlapping part depend on
/// the algorithm rather than on what the author meant.
fn validate(area: &MultiPolygon<f64>, single: bool) -> Result<(), FenceError> {
    if single {
        // Paths of a Polygon have no member index: `geometry.coordinates[ring]`.
        return area.iter().try_for_each(|p| p.check_validation().map_err(|e| polygon_error(&e, COORDS)));
    }
    let member = |i: usize| format!("{COORDS}[{i}]");
    area.check_validation().map_err(|e| match e {
        InvalidMultiPolygon::InvalidPolygon(i, e) => polygon_error(&e, &member(i.0)),
        InvalidMultiPolygon::ElementsOverlaps(a, b) => {
            FenceError::PolygonsIntersect { a: member(a.0), b: member(b.0), how: "overlap" }
        }
        InvalidMultiPolygon::ElementsTouchOnALine(a, b) => {
            FenceError::PolygonsIntersect { a: member(a.0), b: member(b.0), how: "touch along a line" }
        }
    })
}

/// A `geo` validation error, with the ring named by its path in the GeoJSON.
fn polygon_error(error: &InvalidPolygon, path: &str) -> FenceError {
    let ring = |role: &RingRole| match role {
        RingRole::Exterior => format!("{path}[0]"),
        RingRole::Interior(i) => format!("{path}[{}]", i + 1),
    };
    match error {
        InvalidPolygon::TooFewPointsInRing(r) => FenceError::RingDegenerate(ring(r)),
        InvalidPolygon::SelfIntersection(r) => FenceError::SelfIntersecting(ring(r)),
        // JSON numbers are finite, so this cannot come from a parsed fence.
        InvalidPolygon::NonFiniteCoord(r, _) => FenceError::WrongType {
            path: ring(r),
            expected: "finite coordinates",
            found: "a non-finite one".into(),
        },
        InvalidPolygon::InteriorRingNotContainedInExteriorRing(r) => {
            FenceError::HoleOutside { hole: ring(r), outer: format!("{path}[0]") }
        }
        InvalidPolygon::IntersectingRingsOnALine(a, b) => {
            FenceError::RingsIntersect { a: ring(a), b: ring(b), how: "touch along a line" }
        }
        InvalidPolygon::IntersectingRingsOnAnArea(a, b) => {
            FenceError::RingsIntersect { a: ring(a), b: ring(b), how: "overlap" }
        }
    }
}

fn wrong_type(path: impl Into<String>, expected: &'static str, found: &Value) -> FenceError {
    FenceError::WrongType { path: path.into(), expected, found: kind(found) }
}

/// What a JSON value is, for "must be X, got Y".
fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(_) => "a number".into(),
        Value::String(_) => "a string".into(),
        Value::Array(items) => format!("an array of length {}", items.len()),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closed, counter-clockwise rectangle ring, `[lon, lat]`.
    fn rect(w: f64, s: f64, e: f64, n: f64) -> Value {
        json!([[w, s], [e, s], [e, n], [w, n], [w, s]])
    }

    fn feature(id: &str, properties: Value, geometry: Value) -> Value {
        json!({ "type": "Feature", "id": id, "properties": properties, "geometry": geometry })
    }

    fn polygon_feature(id: &str, rings: Value) -> Value {
        feature(id, json!({ "name": id }), json!({ "type": "Polygon", "coordinates": rings }))
    }

    fn circle_feature(id: &str, lat: f64, lon: f64, radius_m: f64) -> Value {
        feature(
            id,
            json!({ "name": id, "radius_m": radius_m }),
            json!({ "type": "Point", "coordinates": [lon, lat] }),
        )
    }

    fn fence(value: &Value) -> Fence {
        Fence::from_feature(value, None).expect("a valid fence")
    }

    fn error(value: &Value) -> String {
        Fence::from_feature(value, None).expect_err("an invalid fence").to_string()
    }

    /// The point `distance` metres from (lat, lon) on the initial bearing, on the sphere
    /// `distance_m` measures with.
    fn destination(lat: f64, lon: f64, bearing_deg: f64, distance: f64) -> (f64, f64) {
        let d = distance / M_PER_DEG_LAT.to_degrees();
        let (p1, l1, b) = (lat.to_radians(), lon.to_radians(), bearing_deg.to_radians());
        let p2 = (p1.sin() * d.cos() + p1.cos() * d.sin() * b.cos()).asin();
        let l2 = l1 + (b.sin() * d.sin() * p1.cos()).atan2(d.cos() - p1.sin() * p2.sin());
        (p2.to_degrees(), l2.to_degrees())
    }

    /// xorshift64*: deterministic test points without a dependency.
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
    }

    #[test]
    fn polygon_hole_is_outside_and_ring_inside() {
        let f = fence(&polygon_feature(
            "park",
            json!([rect(13.0, 52.0, 14.0, 53.0), rect(13.4, 52.4, 13.6, 52.6)]),
        ));
        assert!(f.contains(52.2, 13.2), "between the outer ring and the hole");
        assert!(!f.contains(52.5, 13.5), "in the hole");
        assert!(!f.contains(53.5, 13.5), "outside the outer ring");
        assert!(!f.contains(f64::NAN, 13.5));
    }

    #[test]
    fn boundaries_count_as_inside() {
        let f = fence(&polygon_feature(
            "park",
            json!([rect(13.0, 52.0, 14.0, 53.0), rect(13.4, 52.4, 13.6, 52.6)]),
        ));
        assert!(f.contains(52.0, 13.5), "on the outer edge");
        assert!(f.contains(53.0, 14.0), "on an outer corner");
        assert!(f.contains(52.4, 13.5), "on the hole's edge");
    }

    #[test]
    fn multipolygon_holds_points_in_either_part() {
        let f = fence(&feature(
            "two-depots",
            json!({ "name": "Two depots" }),
            json!({ "type": "MultiPolygon", "coordinates": [
                [rect(13.0, 52.0, 13.1, 52.1)],
                [rect(14.0, 53.0, 14.1, 53.1), rect(14.04, 53.04, 14.06, 53.06)],
            ]}),
        ));
        assert!(f.contains(52.05, 13.05));
        assert!(f.contains(53.02, 14.02));
        assert!(!f.contains(53.05, 14.05), "in the second part's hole");
        assert!(!f.contains(52.5, 13.5), "between the parts");
    }

    #[test]
    fn circle_holds_points_up_to_its_radius() {
        let (lat, lon, radius) = (52.52, 13.405, 500.0);
        let f = fence(&circle_feature("depot", lat, lon, radius));
        for bearing in [0.0, 45.0, 90.0, 180.0, 270.0, 333.0] {
            let (ilat, ilon) = destination(lat, lon, bearing, radius - 1.0);
            let (olat, olon) = destination(lat, lon, bearing, radius + 1.0);
            assert!(f.contains(ilat, ilon), "1 m inside at bearing {bearing}");
            assert!(!f.contains(olat, olon), "1 m outside at bearing {bearing}");
        }
    }

    #[test]
    fn circle_around_a_pole_holds_every_longitude() {
        let f = fence(&circle_feature("arctic", 89.9, 10.0, 50_000.0));
        let index = FenceIndex::new([f]);
        assert_eq!(index.containing(89.95, -170.0).len(), 1);
        assert_eq!(index.containing(90.0, 0.0).len(), 1);
        assert!(index.containing(89.0, -170.0).is_empty());
    }

    /// The box of a circle must never cut off part of the circle, at any latitude.
    #[test]
    fn circle_boxes_hold_the_whole_circle() {
        let mut rng = Rng(7);
        for (lat, radius) in
            [(0.0, 100_000.0), (52.5, 500.0), (70.0, 100_000.0), (-84.0, 80_000.0), (88.0, 100_000.0)]
        {
            let index = FenceIndex::new([fence(&circle_feature("c", lat, 20.0, radius))]);
            for _ in 0..500 {
                let (plat, plon) = destination(lat, 20.0, rng.range(0.0, 360.0), radius - 0.01);
                assert_eq!(index.containing(plat, plon).len(), 1, "({plat}, {plon}) around lat {lat}");
            }
        }
    }

    #[test]
    fn overlapping_fences_are_all_returned_sorted_by_id() {
        let index = FenceIndex::new([
            fence(&polygon_feature("zone-b", json!([rect(13.0, 52.0, 14.0, 53.0)]))),
            fence(&circle_feature("zone-a", 52.5, 13.5, 1_000.0)),
            fence(&polygon_feature("zone-c", json!([rect(15.0, 52.0, 16.0, 53.0)]))),
        ]);
        let ids = |lat, lon| index.containing(lat, lon).iter().map(|f| f.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(52.5, 13.5), ["zone-a", "zone-b"]);
        assert_eq!(ids(52.1, 13.1), ["zone-b"]);
        assert!(ids(40.0, -3.0).is_empty());
        assert_eq!(index.len(), 3);
        assert_eq!(index.get("zone-c").map(|f| f.name.as_str()), Some("zone-c"));
        assert!(index.get("zone-d").is_none());
        assert!(FenceIndex::default().is_empty());
    }

    #[test]
    fn index_keeps_the_last_fence_of_an_id() {
        let mut replaced = fence(&circle_feature("depot", 52.5, 13.5, 100.0));
        replaced.name = "new".into();
        let index = FenceIndex::new([fence(&circle_feature("depot", 52.5, 13.5, 100.0)), replaced]);
        assert_eq!(index.len(), 1);
        assert_eq!(index.get("depot").map(|f| f.name.as_str()), Some("new"));
    }

    /// 1,000 overlapping fences of every kind: the index must answer exactly what testing every
    /// fence answers.
    #[test]
    fn index_agrees_with_brute_force_on_1000_fences() {
        let mut fences = Vec::new();
        for row in 0..25 {
            for col in 0..40 {
                let (lat, lon) = (52.3 + f64::from(row) * 0.01, 13.1 + f64::from(col) * 0.01);
                let id = format!("f{row:02}-{col:02}");
                let value = match (row + col) % 3 {
                    0 => circle_feature(&id, lat, lon, 900.0),
                    1 => polygon_feature(
                        &id,
                        json!([
                            rect(lon - 0.008, lat - 0.006, lon + 0.008, lat + 0.006),
                            rect(lon - 0.002, lat - 0.002, lon + 0.002, lat + 0.002),
                        ]),
                    ),
                    _ => feature(
                        &id,
                        json!({ "name": id }),
                        json!({ "type": "MultiPolygon", "coordinates": [
                            [rect(lon - 0.007, lat - 0.004, lon, lat)],
                            [rect(lon + 0.001, lat + 0.001, lon + 0.006, lat + 0.005)],
                        ]}),
                    ),
                };
                fences.push(fence(&value));
            }
        }
        let index = FenceIndex::new(fences.clone());
        assert_eq!(index.len(), 1_000);

        let mut rng = Rng(42);
        let mut points: Vec<(f64, f64)> =
            (0..400).map(|_| (rng.range(52.28, 52.56), rng.range(13.08, 13.52))).collect();
        points.extend((0..100).map(|i| (52.3 + f64::from(i % 25) * 0.01, 13.1 + f64::from(i % 40) * 0.01)));
        points.extend([(40.0, -3.0), (-33.9, 151.2), (90.0, 0.0)]);
        let (mut empty, mut several) = (0, 0);
        for (lat, lon) in points {
            let got: Vec<&str> = index.containing(lat, lon).iter().map(|f| f.id.as_str()).collect();
            let mut want: Vec<&str> =
                fences.iter().filter(|f| f.contains(lat, lon)).map(|f| f.id.as_str()).collect();
            want.sort_unstable();
            assert_eq!(got, want, "at ({lat}, {lon})");
            empty += usize::from(got.is_empty());
            several += usize::from(got.len() > 1);
        }
        assert!(empty > 10 && several > 50, "the points test little: {empty} empty, {several} overlapping");
    }

    #[test]
    fn round_trip_through_a_feature() {
        let mut with_limit =
            polygon_feature("park", json!([rect(13.0, 52.0, 14.0, 53.0), rect(13.4, 52.4, 13.6, 52.6)]));
        with_limit["properties"]["speed_limit_kmh"] = json!(30);
        let with_altitude = polygon_feature(
            "hill",
            json!([[[13.0, 52.0, 100.0], [13.1, 52.0, 110.0], [13.0, 52.1, 90.0], [13.0, 52.0, 100.0]]]),
        );
        let multi = feature(
            "multi",
            json!({ "name": "Mëhrteilig" }),
            json!({ "type": "MultiPolygon", "coordinates": [[rect(0.0, 0.0, 1.0, 1.0)], [rect(2.0, 2.0, 3.0, 3.0)]] }),
        );
        let mut numeric_id = circle_feature("x", 52.5, 13.4, 250.5);
        numeric_id["id"] = json!(17);
        for value in
            [with_limit, with_altitude, multi, circle_feature("depot", -33.9, 151.2, 75.0), numeric_id]
        {
            let original = fence(&value);
            let text = original.to_feature().to_string();
            let parsed: Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(Fence::from_feature(&parsed, None), Ok(original.clone()), "{text}");
            assert_eq!(parsed["geometry"], value["geometry"], "geometry returned as given");
        }
    }

    #[test]
    fn path_id_wins_over_the_feature_id() {
        let value = circle_feature("in-body", 52.5, 13.4, 100.0);
        assert_eq!(Fence::from_feature(&value, Some("in-path")).map(|f| f.id), Ok("in-path".to_owned()));
        let mut no_id = value.clone();
        no_id.as_object_mut().map(|o| o.remove("id"));
        assert_eq!(Fence::from_feature(&no_id, Some("in-path")).map(|f| f.id), Ok("in-path".to_owned()));
        assert_eq!(error(&no_id), "id is required");
        assert_eq!(
            Fence::from_feature(&value, Some("a/b")).map_err(|e| e.to_string()),
            Err("id contains '/'; only A-Z, a-z, 0-9, '.', '_' and '-' are allowed".to_owned())
        );
    }

    #[test]
    fn every_validation_error_names_the_problem() {
        let square = rect(13.0, 52.0, 14.0, 53.0);
        let poly = |rings: Value| polygon_feature("f", rings);
        let multi = |polygons: Value| {
            feature("f", json!({ "name": "f" }), json!({ "type": "MultiPolygon", "coordinates": polygons }))
        };
        // Sets the member at a JSON pointer, adding it to its object if need be.
        let with = |mut value: Value, pointer: &str, new: Value| {
            let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
            match value.pointer_mut(parent).expect("the parent exists") {
                Value::Object(members) => {
                    members.insert(key.to_owned(), new);
                }
                Value::Array(items) => items[key.parse::<usize>().expect("an index")] = new,
                _ => panic!("{parent} holds no members"),
            }
            value
        };
        let circle = circle_feature("c", 52.5, 13.4, 100.0);
        let many: Vec<[f64; 2]> = (0..=2_000)
            .map(|i| f64::from(i) * std::f64::consts::TAU / 2_000.0)
            .map(|a| [13.0 + a.cos(), 52.0 + a.sin()])
            .collect();
        let long_name = "n".repeat(201);
        let cases: Vec<(Value, String)> = vec![
            // Rings.
            (poly(json!([[[13.1, 52.5], [13.2, 52.5], [13.1, 52.5]]])),
                "ring at geometry.coordinates[0] has 3 positions; a linear ring needs at least 4".into()),
            (poly(json!([[[13.1, 52.5], [13.2, 52.5], [13.2, 52.6], [13.2, 52.5]]])),
                "ring at geometry.coordinates[0] is not closed: first position [13.1, 52.5] differs from last [13.2, 52.5]".into()),
            (poly(json!([[[13, 52], [14, 52], [200, 53], [13, 52]]])),
                "longitude 200 is outside [-180, 180] at geometry.coordinates[0][2]".into()),
            (poly(json!([square, [[13.4, 52.4], [13.5, 95.5], [13.5, 52.5], [13.4, 52.4]]])),
                "latitude 95.5 is outside [-90, 90] at geometry.coordinates[1][1]".into()),
            (poly(json!([[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]])),
                "self-intersecting ring at geometry.coordinates[0]".into()),
            (poly(json!([square, [[13.4, 52.4], [13.5, 52.5], [13.5, 52.4], [13.4, 52.5], [13.4, 52.4]]])),
                "self-intersecting ring at geometry.coordinates[1]".into()),
            (poly(json!([[[0, 0], [1, 0], [0, 0], [0, 0]]])),
                "ring at geometry.coordinates[0] has fewer than 3 distinct positions".into()),
            (poly(json!([square, rect(15.0, 52.0, 15.5, 52.5)])),
                "hole at geometry.coordinates[1] is not inside the outer ring at geometry.coordinates[0]".into()),
            (poly(json!([square, rect(13.2, 52.2, 13.6, 52.6), rect(13.4, 52.4, 13.8, 52.8)])),
                "rings at geometry.coordinates[1] and geometry.coordinates[2] overlap".into()),
            (poly(json!([])), "geometry.coordinates must hold at least one ring".into()),
            (poly(json!([many])), "geometry has 2001 positions; at most 2000 are allowed".into()),
            (poly(json!([rect(170.0, 0.0, -170.0, 1.0)])),
                "geometry spans 340 degrees of longitude; fences across the antimeridian are not supported".into()),
            // MultiPolygons.
            (multi(json!([[square], [rect(13.5, 52.5, 14.5, 53.5)]])),
                "polygons at geometry.coordinates[0] and geometry.coordinates[1] overlap".into()),
            (multi(json!([[square], [rect(14.0, 52.0, 15.0, 53.0)]])),
                "polygons at geometry.coordinates[0] and geometry.coordinates[1] touch along a line".into()),
            (multi(json!([[square], [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]])),
                "self-intersecting ring at geometry.coordinates[1][0]".into()),
            (multi(json!([])), "geometry.coordinates must hold at least one polygon".into()),
            // Geometry.
            (feature("f", json!({ "name": "f" }), json!({ "type": "LineString", "coordinates": [[0, 0], [1, 1]] })),
                "unsupported geometry type LineString; use Polygon, MultiPolygon, or Point with properties.radius_m".into()),
            (with(poly(json!([square])), "/geometry", Value::Null), "geometry is required".into()),
            (with(poly(json!([square])), "/geometry", json!("POLYGON")),
                "geometry must be a GeoJSON geometry object, got a string".into()),
            (with(poly(json!([square])), "/geometry/coordinates/0/1", json!("13,52")),
                "geometry.coordinates[0][1] must be a position [lon, lat], got a string".into()),
            (with(poly(json!([square])), "/geometry/coordinates/0/1", json!([13])),
                "geometry.coordinates[0][1] must be a position [lon, lat], got an array of length 1".into()),
            (with(poly(json!([square])), "/geometry/coordinates/0", json!({})),
                "geometry.coordinates[0] must be an array of positions, got an object".into()),
            // Circles.
            (with(circle.clone(), "/properties/radius_m", Value::Null), "properties.radius_m is required".into()),
            (with(circle.clone(), "/properties/radius_m", json!(0)),
                "properties.radius_m is 0; it must be > 0 and <= 100000".into()),
            (with(circle.clone(), "/properties/radius_m", json!(100_001)),
                "properties.radius_m is 100001; it must be > 0 and <= 100000".into()),
            (with(circle.clone(), "/properties/radius_m", json!("100")),
                "properties.radius_m must be a number, got a string".into()),
            (with(poly(json!([square])), "/properties/radius_m", json!(100)),
                "properties.radius_m only applies to a Point geometry (a circle), not a Polygon".into()),
            (circle_feature("c", 0.0, 179.99, 5_000.0),
                "circle at geometry.coordinates crosses the antimeridian; fences across it are not supported".into()),
            (with(circle.clone(), "/geometry/coordinates", json!([13.4, -91])),
                "latitude -91 is outside [-90, 90] at geometry.coordinates".into()),
            // Feature, id and properties.
            (json!({ "type": "FeatureCollection", "features": [] }), "not a GeoJSON Feature (type is FeatureCollection)".into()),
            (json!({ "id": "f" }), "not a GeoJSON Feature (type is missing)".into()),
            (json!([1, 2]), "not a GeoJSON Feature (got an array of length 2)".into()),
            (with(circle.clone(), "/id", json!("")), "id must not be empty".into()),
            (with(circle.clone(), "/id", json!("x".repeat(129))), "id has 129 characters; at most 128 are allowed".into()),
            (with(circle.clone(), "/id", json!("bus depot")),
                "id contains ' '; only A-Z, a-z, 0-9, '.', '_' and '-' are allowed".into()),
            (with(circle.clone(), "/id", json!(["a"])), "id must be a string or an integer, got an array of length 1".into()),
            (with(circle.clone(), "/id", json!(1.5)), "id must be a string or an integer, got a number".into()),
            (with(circle.clone(), "/properties", json!("depot")), "properties must be an object, got a string".into()),
            (with(circle.clone(), "/properties/name", Value::Null), "properties.name is required".into()),
            (with(circle.clone(), "/properties/name", json!(7)), "properties.name must be a string, got a number".into()),
            (with(circle.clone(), "/properties/name", json!("  ")), "properties.name must not be empty".into()),
            (with(circle.clone(), "/properties/name", json!(long_name)),
                "properties.name has 201 characters; at most 200 are allowed".into()),
            (with(circle.clone(), "/properties/speed_limit_kmh", json!(0)),
                "properties.speed_limit_kmh is 0; it must be > 0 and <= 300".into()),
            (with(circle.clone(), "/properties/speed_limit_kmh", json!(300.5)),
                "properties.speed_limit_kmh is 300.5; it must be > 0 and <= 300".into()),
            (with(circle.clone(), "/properties/speed_limit_kmh", json!("50")),
                "properties.speed_limit_kmh must be a number, got a string".into()),
        ];
        for (value, message) in cases {
            assert_eq!(error(&value), message, "for {value}");
        }
        // The limits themselves are accepted.
        let at_limits = with(
            with(circle, "/properties/radius_m", json!(100_000)),
            "/properties/speed_limit_kmh",
            json!(300),
        );
        assert!(Fence::from_feature(&with(at_limits, "/id", json!("x".repeat(128))), None).is_ok());
    }

    /// Found by fuzz/ (target `geofence`): a refusal stays one line, whatever the strings it
    /// quotes hold.
    #[test]
    fn errors_stay_on_one_line() {
        let found = r#"{"type": "Feature", "id": "m", "properties": {"name": "M\u00ebhrte\\", "speed_limit_kmh": 50}, "geometry": {"type": "Poly\\\\\\\\\n", "coordinates": [[[[13, 4, 53, 90], [13, 2, 100]]], [[[14,53], [14, 52]]]]}}"#;
        let found: Value = serde_json::from_str(found).expect("JSON");
        assert_eq!(
            error(&found),
            r"unsupported geometry type Poly\\\\\\\\\n; use Polygon, MultiPolygon, or Point with properties.radius_m"
        );
        assert_eq!(error(&json!({ "type": "Feature\n" })), r"not a GeoJSON Feature (type is Feature\n)");
        let collection = parse_collection(&json!({ "type": "Feature\r\nCollection" })).map_err(|e| e.to_string());
        assert_eq!(collection, Err(r"not a GeoJSON FeatureCollection (type is Feature\r\nCollection)".to_owned()));
    }

    #[test]
    fn collection_names_the_failing_feature() {
        let collection = |features: Value| json!({ "type": "FeatureCollection", "features": features });
        let a = circle_feature("a", 52.5, 13.4, 100.0);
        let b = polygon_feature("b", json!([rect(13.0, 52.0, 14.0, 53.0)]));
        let fences = parse_collection(&collection(json!([a, b]))).expect("valid collection");
        assert_eq!(fences.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(parse_collection(&collection(json!([]))), Ok(Vec::new()));

        let message = |value: Value| parse_collection(&value).expect_err("invalid").to_string();
        assert_eq!(
            message(collection(json!([a, b, a]))),
            "features[2]: duplicate id \"a\" (first used by features[0])"
        );
        assert_eq!(
            message(collection(json!([
                a,
                polygon_feature("c", json!([[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]))
            ]))),
            "features[1]: self-intersecting ring at geometry.coordinates[0]"
        );
        assert_eq!(message(a.clone()), "not a GeoJSON FeatureCollection (type is Feature)");
        assert_eq!(message(json!({ "type": "FeatureCollection" })), "features is required");
        assert_eq!(
            message(json!({ "type": "FeatureCollection", "features": {} })),
            "features must be an array, got an object"
        );
    }
}
