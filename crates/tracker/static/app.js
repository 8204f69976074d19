// fleetstream live map: every vehicle as a marker, moved by the live feed (/api/live, SSE);
// a list with last-seen times; a vehicle's recent trail and its trips of the day on click;
// the geofences (/api/geofences, reloaded every 30 s or on the button); fleet events as they
// happen (/api/events/live, SSE) in a list and as markers. Plain script, no build step.
//
// Markers carry data-obu-id, data-seq, data-lat and data-lon (tests read them), and are pure
// CSS, so they show even when no map tile can be loaded. Event markers, fences, trips and the
// event list carry data-event-id / data-fence-id. Text from the API only ever goes into the
// page as text (textContent, or DOM nodes handed to Leaflet), never as HTML.
//
// The API wants a token (docs/api.md, Authentication): when it answers 401 the page asks for
// one (#signin), keeps it in sessionStorage (this tab, until it is closed or "Sign out"), and
// sends it on every request, and as ?access_token= on the live feeds (EventSource cannot set
// headers). The page itself holds no data, so it is served without a token.
(function () {
  'use strict';

  var state = {
    config: null,
    vehicles: new Map(),   // obu_id -> latest position (API shape)
    markers: new Map(),    // obu_id -> L.Marker
    rows: new Map(),       // obu_id -> <li>
    selected: null,
    trail: null,
    clockOffset: 0,        // server clock minus browser clock, ms
    fitted: false,
    fencesJSON: null,      // the last collection drawn, as text: unchanged ones are not redrawn
    fenceNames: new Map(), // fence id -> name, for overspeed events inside a fence
    events: [],            // shown events, newest first: { event, li, marker }
    eventIds: new Set(),
    trips: [],             // the selected vehicle's trips today, as the API gives them
    trip: null,            // the trip drawn: { id, layers }
  };

  // How many events the list and the map keep: a page left open for days stays this size.
  var MAX_EVENTS = 50;
  // Event markers older than this (device time) are drawn faded.
  var EVENT_FRESH_MS = 3600000;
  // Fences are reloaded this often (sooner while they cannot be loaded).
  var FENCE_REFRESH_MS = 30000;
  var FENCE_RETRY_MS = 5000;
  // A trip's track is fetched in pages of --max-track-points; this many pages at most.
  var MAX_TRACK_PAGES = 10;

  var map = L.map('map', { worldCopyJump: true, preferCanvas: false }).setView([20, 0], 2);
  // Fences lie under the trails (overlay pane, 400); event markers under the vehicles (600).
  map.createPane('fences').style.zIndex = 350;
  map.createPane('events').style.zIndex = 590;
  var fenceLayer = L.layerGroup().addTo(map);
  var eventLayer = L.layerGroup().addTo(map);
  var list = document.getElementById('vehicles');
  var eventList = document.getElementById('events');

  var TOKEN_KEY = 'fleetstream.api-token';

  function apiToken() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch (_) { return ''; }
  }

  // Request headers with the token, if there is one.
  function authorized(headers) {
    var token = apiToken();
    if (token) headers.Authorization = 'Bearer ' + token;
    return headers;
  }

  function feedURL(path) {
    var token = apiToken();
    return token ? path + '?access_token=' + encodeURIComponent(token) : path;
  }

  // The sign-in form over the page; `rejected`: a token was sent and refused.
  function askToken() {
    var rejected = apiToken() !== '';
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* storage disabled */ }
    document.getElementById('signout').hidden = true;
    var error = document.getElementById('signin-error');
    error.hidden = !rejected;
    error.textContent = rejected ? 'That token was not accepted.' : '';
    var box = document.getElementById('signin');
    if (box.hidden) {
      box.hidden = false;
      document.getElementById('signin-token').focus();
    }
  }

  function unauthorized(url) {
    askToken();
    var e = new Error(url + ': 401 a token is needed');
    e.unauthorized = true;
    return e;
  }

  document.getElementById('signin-form').addEventListener('submit', function (e) {
    e.preventDefault();
    var input = document.getElementById('signin-token');
    var token = input.value.trim();
    if (!token) return;
    try { sessionStorage.setItem(TOKEN_KEY, token); } catch (_) { /* storage disabled: this page only */ }
    input.value = '';
    document.getElementById('signin').hidden = true;
    // Refused before anything was shown: start now; refused later: start afresh.
    if (state.config == null && apiToken() === token) start(); else location.reload();
  });

  document.getElementById('signout').addEventListener('click', function () {
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* storage disabled */ }
    location.reload();
  });

  function getJSON(url) {
    return fetch(url, { headers: authorized({ Accept: 'application/json' }) }).then(function (r) {
      if (r.status === 401) throw unauthorized(url);
      if (!r.ok) {
        return r.json().catch(function () { return {}; }).then(function (body) {
          throw new Error(url + ': ' + r.status + ' ' + (body.message || r.statusText));
        });
      }
      return r.json();
    });
  }

  function notice(text) {
    var n = document.getElementById('notice');
    n.textContent = text;
    n.hidden = false;
  }

  function serverNow() { return Date.now() + state.clockOffset; }

  function ago(ms) {
    var s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }

  function isOnline(v) { return serverNow() - v.ts <= state.config.online_timeout_ms; }

  function pad(n) { return (n < 10 ? '0' : '') + n; }

  // Local wall-clock time (to the second unless `minutes`); with the date when not today.
  function clock(ms, minutes) {
    var d = new Date(ms), today = new Date(serverNow());
    var time = pad(d.getHours()) + ':' + pad(d.getMinutes()) + (minutes ? '' : ':' + pad(d.getSeconds()));
    if (d.toDateString() === today.toDateString()) return time;
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' + time;
  }

  function kmh(v) { return Math.round(Number(v)) + ' km/h'; }

  function km(m) { return (Number(m) / 1000).toFixed(1) + ' km'; }

  function duration(seconds) {
    var s = Math.max(0, Math.round(Number(seconds)));
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min' + (s % 60 ? ' ' + (s % 60) + ' s' : '');
    return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
  }

  // An element with text in it (never HTML): what tooltips and labels are built from.
  function el(tag, className, text) {
    var e = document.createElement(tag);
    if (className) e.className = className;
    if (text != null) e.textContent = String(text);
    return e;
  }

  // Local midnight of today, by the server's clock.
  function midnight() {
    var d = new Date(serverNow());
    d.setHours(0, 0, 0, 0);
    return d.getTime();
  }

  function markerIcon(v) {
    var arrow = v.heading == null ? '' : '<span class="arrow" style="transform: rotate(' + Number(v.heading) + 'deg)"></span>';
    return L.divIcon({
      className: 'vehicle-icon',
      html: arrow + '<span class="dot"></span><span class="label">' + String(Number(v.obu_id)) + '</span>',
      iconSize: [14, 14],
      iconAnchor: [7, 7],
    });
  }

  function tagMarker(marker, v) {
    var el = marker.getElement();
    if (!el) return;
    el.setAttribute('data-obu-id', String(v.obu_id));
    el.setAttribute('data-seq', String(v.seq));
    el.setAttribute('data-lat', String(v.lat));
    el.setAttribute('data-lon', String(v.lon));
    el.classList.toggle('offline', !isOnline(v));
    el.classList.toggle('selected', state.selected === v.obu_id);
    el.title = 'Vehicle ' + v.obu_id;
  }

  function rowFor(v) {
    var li = state.rows.get(v.obu_id);
    if (li) return li;
    li = document.createElement('li');
    li.setAttribute('data-obu-id', String(v.obu_id));
    ['state', 'name', 'speed', 'age'].forEach(function (cls) {
      var span = document.createElement('span');
      span.className = cls;
      li.appendChild(span);
    });
    li.children[1].textContent = 'Vehicle ' + v.obu_id;
    li.addEventListener('click', function () { select(v.obu_id, true); });
    state.rows.set(v.obu_id, li);
    return li;
  }

  function renderRow(v) {
    var li = rowFor(v);
    li.children[2].textContent = v.speed == null ? '' : Math.round(v.speed) + ' km/h';
    li.children[3].textContent = ago(serverNow() - v.ts);
    li.classList.toggle('offline', !isOnline(v));
    li.classList.toggle('selected', state.selected === v.obu_id);
  }

  // Most recently seen first: the list answers "who is moving right now".
  function sortList() {
    var ordered = Array.from(state.vehicles.values()).sort(function (a, b) { return b.ts - a.ts || a.obu_id - b.obu_id; });
    ordered.forEach(function (v) { list.appendChild(rowFor(v)); });
  }

  function renderCounts() {
    var total = state.vehicles.size, online = 0;
    state.vehicles.forEach(function (v) { if (isOnline(v)) online++; });
    document.getElementById('counts').textContent = total + ' vehicles, ' + online + ' online';
    document.body.setAttribute('data-vehicles', String(total));
  }

  // Whether position a is b or comes after it: by boot (absent for devices that send none,
  // and every later boot is newer), then seq.
  function notBefore(a, b) {
    var ab = a.boot || 0, bb = b.boot || 0;
    return ab > bb || (ab === bb && a.seq >= b.seq);
  }

  // Applies a position if it is newer than what is shown (late and replayed ones are not).
  function apply(v) {
    var known = state.vehicles.get(v.obu_id);
    if (v.out_of_order || (known && notBefore(known, v))) return false;
    state.vehicles.set(v.obu_id, v);
    var ll = [v.lat, v.lon];
    var marker = state.markers.get(v.obu_id);
    if (!marker) {
      marker = L.marker(ll, { icon: markerIcon(v), keyboard: true, riseOnHover: true }).addTo(map);
      marker.on('click', function () { select(v.obu_id, false); });
      state.markers.set(v.obu_id, marker);
    } else {
      marker.setLatLng(ll);
      if ((known && known.heading) !== v.heading) marker.setIcon(markerIcon(v));
    }
    tagMarker(marker, v);
    renderRow(v);
    if (state.selected === v.obu_id) {
      if (state.trail) {
        state.trail.addLatLng(ll);
        tagTrail();
      }
      renderSelection();
    }
    return true;
  }

  // Takes a vehicle off the map and the list: it was decommissioned (its next position, if
  // any, brings it back).
  function remove(id) {
    if (!state.vehicles.has(id)) return;
    if (state.selected === id) clearSelection();
    state.vehicles.delete(id);
    var marker = state.markers.get(id);
    if (marker) { marker.remove(); state.markers.delete(id); }
    var li = state.rows.get(id);
    if (li) { li.remove(); state.rows.delete(id); }
    renderCounts();
  }

  function fitOnce() {
    if (state.fitted || state.vehicles.size === 0) return;
    var bounds = L.latLngBounds(Array.from(state.vehicles.values()).map(function (v) { return [v.lat, v.lon]; }));
    map.fitBounds(bounds, { padding: [40, 40], maxZoom: 15 });
    state.fitted = true;
  }

  function loadVehicles() {
    return getJSON('/api/vehicles').then(function (body) {
      state.clockOffset = body.generated_at - Date.now();
      body.vehicles.forEach(apply);
      // What the list no longer has was decommissioned while the feed was down or behind.
      var listed = new Set(body.vehicles.map(function (v) { return v.obu_id; }));
      Array.from(state.vehicles.keys()).forEach(function (id) { if (!listed.has(id)) remove(id); });
      sortList();
      renderCounts();
      fitOnce();
    });
  }

  function tagTrail() {
    var el = state.trail && state.trail.getElement();
    if (!el) return;
    el.setAttribute('data-obu-id', String(state.selected));
    el.setAttribute('data-points', String(state.trail.getLatLngs().length));
  }

  function renderSelection() {
    var v = state.vehicles.get(state.selected);
    var box = document.getElementById('selection');
    if (!v) { box.hidden = true; return; }
    box.hidden = false;
    document.getElementById('sel-id').textContent = String(v.obu_id);
    var parts = [
      v.lat.toFixed(5) + ', ' + v.lon.toFixed(5),
      v.speed == null ? null : Math.round(v.speed) + ' km/h',
      v.heading == null ? null : Math.round(v.heading) + '°',
      'seq ' + v.seq,
      'seen ' + ago(serverNow() - v.ts),
    ];
    var points = state.trail ? state.trail.getLatLngs().length : 0;
    parts.push('trail: ' + points + ' points, last ' + Math.round(state.config.trail_ms / 60000) + ' min');
    document.getElementById('sel-info').textContent = parts.filter(Boolean).join(' · ');
  }

  // The selection lives in the address (#vehicle=17), so a link opens the map on a vehicle.
  function setHash(id) {
    var hash = id == null ? '' : '#vehicle=' + id;
    if (location.hash !== hash) history.replaceState(null, '', location.pathname + location.search + hash);
  }

  function hashVehicle() {
    var m = /^#vehicle=(\d+)$/.exec(location.hash);
    return m ? Number(m[1]) : null;
  }

  function clearSelection() {
    setHash(null);
    if (state.trail) { state.trail.remove(); state.trail = null; }
    clearTrip();
    state.trips = [];
    renderTrips(null);
    var previous = state.selected;
    state.selected = null;
    if (previous != null && state.vehicles.has(previous)) {
      tagMarker(state.markers.get(previous), state.vehicles.get(previous));
      renderRow(state.vehicles.get(previous));
    }
    renderSelection();
  }

  // Selects a vehicle: its trail, and its trips of today (`tripId`: draw that one once loaded).
  function select(id, pan, tripId) {
    clearSelection();
    state.selected = id;
    var v = state.vehicles.get(id);
    if (!v) return;
    loadTrips(id, tripId);
    setHash(id);
    tagMarker(state.markers.get(id), v);
    renderRow(v);
    if (pan) map.panTo([v.lat, v.lon]);
    var from = '-' + Math.max(1, Math.round(state.config.trail_ms / 1000)) + 's';
    getJSON('/api/vehicles/' + encodeURIComponent(id) + '/track?from=' + encodeURIComponent(from)).then(function (track) {
      if (state.selected !== id) return;
      var latlngs = track.points.filter(function (p) { return !p.out_of_order; }).map(function (p) { return [p.lat, p.lon]; });
      var last = state.vehicles.get(id);
      // The trail ends where the marker is, even if the marker moved while the track loaded.
      if (last && (latlngs.length === 0 || track.points[track.points.length - 1].seq < last.seq)) latlngs.push([last.lat, last.lon]);
      state.trail = L.polyline(latlngs, { className: 'trail', weight: 4, opacity: 0.85 }).addTo(map);
      tagTrail();
      renderSelection();
    }).catch(function (e) { notice('Cannot load the trail: ' + e.message); });
    renderSelection();
  }

  // ---- Trips of the day ------------------------------------------------------------------

  function loadTrips(id, tripId) {
    var url = '/api/vehicles/' + encodeURIComponent(id) + '/trips?from=' + midnight() + '&to=now';
    // A reload (a trip just ended) keeps the list shown until the new one is in.
    if (!state.trips.length) renderTrips('loading…');
    return getJSON(url).then(function (body) {
      if (state.selected !== id) return;
      state.trips = body.trips;
      renderTrips(null);
      if (tripId != null) showTrip(tripId);
    }).catch(function (e) {
      if (state.selected === id) renderTrips('cannot load the trips: ' + e.message);
    });
  }

  function renderTrips(message) {
    var ul = document.getElementById('trips');
    ul.textContent = '';
    document.getElementById('trips-count').textContent = message == null ? '(' + state.trips.length + ')' : '';
    if (message != null || state.trips.length === 0) {
      ul.appendChild(el('li', 'empty', message == null ? 'No trips today.' : message));
      return;
    }
    state.trips.forEach(function (t) {
      var li = el('li');
      li.setAttribute('data-event-id', String(t.event_id));
      li.appendChild(el('span', 'when', clock(t.start_ts, true) + ' → ' + clock(t.end_ts, true)));
      li.appendChild(el('span', 'what', km(t.distance_m) + ' · ' + duration(t.duration_s)));
      li.classList.toggle('selected', state.trip != null && state.trip.id === t.event_id);
      li.title = 'Draw this trip';
      li.addEventListener('click', function () {
        if (state.trip && state.trip.id === t.event_id) clearTrip(); else showTrip(t.event_id);
      });
      ul.appendChild(li);
    });
  }

  function clearTrip() {
    if (state.trip) state.trip.layers.forEach(function (l) { l.remove(); });
    state.trip = null;
    var box = document.getElementById('trip-summary');
    box.hidden = true;
    box.textContent = '';
    Array.prototype.forEach.call(document.querySelectorAll('#trips li'), function (li) { li.classList.remove('selected'); });
  }

  // The positions from start_ts to end_ts, following `truncated` page by page (points at the
  // boundary come twice: their seq tells).
  function fetchTrack(id, from, to) {
    var points = [], seen = new Set();
    function page(start, n) {
      var url = '/api/vehicles/' + encodeURIComponent(id) + '/track?from=' + start + '&to=' + to;
      return getJSON(url).then(function (track) {
        track.points.forEach(function (p) {
          if (!seen.has(p.seq)) { seen.add(p.seq); points.push(p); }
        });
        var last = track.points[track.points.length - 1];
        if (track.truncated && last && n + 1 < MAX_TRACK_PAGES && last.ts > start) return page(last.ts, n + 1);
        return { points: points, complete: !track.truncated };
      });
    }
    return page(from, 0);
  }

  function tripMarker(ll, kind, t, when) {
    var m = L.marker(ll, {
      icon: L.divIcon({ className: 'trip-mark ' + kind, html: '<span>' + (kind === 'start' ? 'A' : 'B') + '</span>', iconSize: [18, 18], iconAnchor: [9, 9] }),
      keyboard: false,
      zIndexOffset: -100,
    }).addTo(map);
    m.bindTooltip(el('span', null, (kind === 'start' ? 'Trip start ' : 'Trip end ') + clock(when)));
    var e = m.getElement();
    if (e) e.setAttribute('data-event-id', String(t.event_id));
    return m;
  }

  function showTrip(eventId) {
    var id = state.selected;
    var t = state.trips.find(function (x) { return x.event_id === eventId; });
    if (!t) return;
    clearTrip();
    state.trip = { id: eventId, layers: [] };
    renderTrips(null);
    var summary = document.getElementById('trip-summary');
    summary.hidden = false;
    summary.textContent = 'Loading the track…';
    fetchTrack(id, t.start_ts, t.end_ts).then(function (track) {
      if (state.selected !== id || !state.trip || state.trip.id !== eventId) return;
      var latlngs = track.points.filter(function (p) { return !p.out_of_order; }).map(function (p) { return [p.lat, p.lon]; });
      var line = L.polyline(latlngs, { className: 'trip-track', weight: 5, opacity: 0.9 }).addTo(map);
      var e = line.getElement();
      if (e) {
        e.setAttribute('data-event-id', String(eventId));
        e.setAttribute('data-points', String(latlngs.length));
      }
      var start = tripMarker([t.start_lat, t.start_lon], 'start', t, t.start_ts);
      var end = tripMarker([t.end_lat, t.end_lon], 'end', t, t.end_ts);
      state.trip.layers = [line, start, end];
      var bounds = L.latLngBounds([[t.start_lat, t.start_lon], [t.end_lat, t.end_lon]].concat(latlngs));
      map.fitBounds(bounds, { padding: [60, 60], maxZoom: 16 });
      summary.textContent = '';
      summary.appendChild(el('div', 'when', 'Trip ' + clock(t.start_ts) + ' → ' + clock(t.end_ts)));
      summary.appendChild(el('div', 'figures', [
        km(t.distance_m), duration(t.duration_s), 'max ' + kmh(t.max_speed_kmh), 'avg ' + kmh(t.avg_speed_kmh),
      ].join(' · ')));
      summary.appendChild(el('div', 'points', latlngs.length + ' points' + (track.complete ? '' : ' (the first ones only: the trip is longer than the tracker returns)')));
    }).catch(function (e) {
      if (state.trip && state.trip.id === eventId) summary.textContent = 'Cannot load the track: ' + e.message;
    });
  }

  // ---- Geofences --------------------------------------------------------------------------

  function fenceLabel(p) {
    var label = el('span', 'fence-label-text');
    label.appendChild(el('b', null, p.name == null ? '' : p.name));
    if (p.speed_limit_kmh != null) label.appendChild(el('span', 'limit', kmh(p.speed_limit_kmh)));
    return label;
  }

  function drawFences(collection) {
    fenceLayer.clearLayers();
    state.fenceNames = new Map();
    var style = { pane: 'fences', className: 'fence', interactive: false, weight: 2, fillOpacity: 0.1 };
    var drawn = 0;
    (collection.features || []).forEach(function (f) {
      var p = f.properties || {};
      state.fenceNames.set(f.id, p.name);
      var layer;
      try {
        layer = L.geoJSON(f, {
          style: function () { return style; },
          pointToLayer: function (feature, ll) {
            return L.circle(ll, L.extend({ radius: Number(p.radius_m) || 0 }, style));
          },
        });
      } catch (_) {
        return; // a geometry this page cannot draw: the others still are
      }
      layer.eachLayer(function (shape) {
        shape.bindTooltip(fenceLabel(p), { permanent: true, direction: 'center', className: 'fence-label' });
      });
      var tag = function (shape) {
        var e = shape.getElement && shape.getElement();
        if (!e) return;
        e.setAttribute('data-fence-id', String(f.id));
        if (p.speed_limit_kmh != null) e.classList.add('limited');
      };
      // Hidden and shown again (the layer control), a shape gets a new element: tag it again.
      layer.eachLayer(function (shape) { shape.on('add', function () { tag(shape); }); });
      layer.addTo(fenceLayer);
      drawn++;
    });
    document.body.setAttribute('data-fences', String(drawn));
    document.getElementById('fence-count').textContent = drawn + (drawn === 1 ? ' fence' : ' fences');
  }

  // Resolves to whether the fences could be loaded.
  function loadFences() {
    var button = document.getElementById('fences-refresh');
    return fetch('/api/geofences', { headers: authorized({ Accept: 'application/geo+json, application/json' }) }).then(function (r) {
      if (r.status === 401) throw unauthorized('/api/geofences');
      return r.text().then(function (text) {
        if (!r.ok) {
          var message = r.statusText;
          try { message = JSON.parse(text).message || message; } catch (_) { /* not JSON */ }
          throw new Error(message);
        }
        button.classList.remove('failed');
        button.title = 'Reload the geofences (they also reload every ' + FENCE_REFRESH_MS / 1000 + ' s)';
        if (text === state.fencesJSON) return true;
        drawFences(JSON.parse(text));
        state.fencesJSON = text;
        // Overspeed events name their fence: now they can.
        state.events.forEach(function (x) { fillEventRow(x.li, x.event); });
        return true;
      });
    }).catch(function (e) {
      // Not a notice: the tracker may still be reading the fences topic; a retry follows.
      button.classList.add('failed');
      button.title = 'The geofences cannot be loaded: ' + e.message + '. Click to retry.';
      return false;
    });
  }

  function followFences() {
    loadFences().then(function (ok) { setTimeout(followFences, ok ? FENCE_REFRESH_MS : FENCE_RETRY_MS); });
  }

  var FenceControl = L.Control.extend({
    options: { position: 'topright' },
    onAdd: function () {
      var div = L.DomUtil.create('div', 'leaflet-bar fence-control');
      var button = L.DomUtil.create('button', '', div);
      button.type = 'button';
      button.id = 'fences-refresh';
      button.appendChild(el('span', null, '⟳ '));
      var count = el('span', null, 'fences');
      count.id = 'fence-count';
      button.appendChild(count);
      L.DomEvent.disableClickPropagation(div);
      L.DomEvent.on(button, 'click', function () { loadFences(); });
      return div;
    },
  });

  // ---- Fleet events -----------------------------------------------------------------------

  var CATEGORY = {
    geofence_enter: 'geofence', geofence_exit: 'geofence',
    overspeed: 'overspeed', overspeed_end: 'overspeed',
    moving: 'motion', stopped: 'motion',
    online: 'presence', offline: 'presence',
    ignition_on: 'ignition', ignition_off: 'ignition',
    alarm: 'alarm',
    trip: 'trip',
  };
  var GLYPH = { geofence: 'G', overspeed: 'S', motion: 'M', presence: 'P', ignition: 'I', alarm: '!', trip: 'T', other: '•' };
  // The end of something is drawn hollow.
  var ENDING = { geofence_exit: true, overspeed_end: true, stopped: true, offline: true, ignition_off: true };

  function has(table, key) { return Object.prototype.hasOwnProperty.call(table, key); }

  function category(ev) { return has(CATEGORY, ev.type) ? CATEGORY[ev.type] : 'other'; }

  // The field of its type a dispatcher looks at first.
  function eventDetail(ev) {
    switch (ev.type) {
      case 'geofence_enter':
      case 'geofence_exit':
        return ev.fence_name || ev.fence_id || '';
      case 'overspeed':
      case 'overspeed_end': {
        var text = 'peak ' + kmh(ev.peak_kmh) + ' / limit ' + kmh(ev.limit_kmh);
        if (ev.fence_id != null) text += ' in ' + (state.fenceNames.get(ev.fence_id) || ev.fence_id);
        if (ev.type === 'overspeed_end' && ev.duration_s != null) text += ' for ' + duration(ev.duration_s);
        return text;
      }
      case 'moving':
        return ev.speed_kmh == null ? '' : kmh(ev.speed_kmh);
      case 'stopped':
        return ev.since == null ? '' : 'since ' + clock(ev.since);
      case 'online':
        return ev.last_ts == null ? 'first position' : 'silent for ' + duration((ev.ts - ev.last_ts) / 1000);
      case 'offline':
        return ev.timeout_s == null ? '' : 'nothing for ' + duration(ev.timeout_s);
      case 'alarm':
        return ev.alarm == null ? '' : String(ev.alarm);
      case 'trip':
        return km(ev.distance_m) + ' in ' + duration(ev.duration_s);
      default:
        return '';
    }
  }

  // Newest first, as /api/events orders them.
  function newer(a, b) {
    return b.ts - a.ts || b.obu_id - a.obu_id || b.seq - a.seq;
  }

  function fillEventRow(li, ev) {
    li.querySelector('.detail').textContent = eventDetail(ev);
  }

  function eventRow(ev) {
    var li = el('li', 'cat-' + category(ev));
    li.setAttribute('data-event-id', String(ev.event_id));
    li.setAttribute('data-type', String(ev.type));
    li.setAttribute('data-vehicle', String(ev.obu_id));
    li.appendChild(el('span', 'cat', GLYPH[category(ev)]));
    li.appendChild(el('span', 'type', ev.type));
    li.appendChild(el('span', 'vehicle', 'Vehicle ' + ev.obu_id));
    li.appendChild(el('span', 'time', clock(ev.ts)));
    li.appendChild(el('span', 'detail'));
    fillEventRow(li, ev);
    li.title = 'Show on the map';
    li.addEventListener('click', function () { focusEvent(ev); });
    return li;
  }

  function eventTooltip(ev) {
    var box = el('div', 'event-tip');
    box.appendChild(el('b', null, ev.type));
    box.appendChild(el('div', null, 'Vehicle ' + ev.obu_id + ' · ' + clock(ev.ts)));
    var detail = eventDetail(ev);
    if (detail) box.appendChild(el('div', null, detail));
    return box;
  }

  function eventMarker(ev) {
    var lat = Number(ev.lat), lon = Number(ev.lon);
    if (!isFinite(lat) || !isFinite(lon)) return null;
    var cat = category(ev);
    var m = L.marker([lat, lon], {
      pane: 'events',
      icon: L.divIcon({
        className: 'event-icon ev-' + cat + (has(ENDING, ev.type) ? ' ending' : ''),
        html: '<span>' + GLYPH[cat] + '</span>',
        iconSize: [16, 16],
        iconAnchor: [8, 8],
      }),
      keyboard: false,
    }).addTo(eventLayer);
    m.bindTooltip(eventTooltip(ev), { direction: 'top', offset: [0, -8] });
    tagEventMarker(m, ev);
    // Off then on again (the layer control), a marker gets a new element: tag it again.
    m.on('add', function () { tagEventMarker(m, ev); });
    return m;
  }

  function tagEventMarker(m, ev) {
    var e = m.getElement();
    if (!e) return;
    e.setAttribute('data-event-id', String(ev.event_id));
    e.setAttribute('data-type', String(ev.type));
    e.setAttribute('data-category', category(ev));
    e.setAttribute('data-lat', String(ev.lat));
    e.setAttribute('data-lon', String(ev.lon));
    e.classList.toggle('old', serverNow() - ev.ts > EVENT_FRESH_MS);
  }

  function focusEvent(ev) {
    var x = state.events.find(function (y) { return y.event.event_id === ev.event_id; });
    if (ev.type === 'trip' && state.vehicles.has(ev.obu_id)) {
      if (state.selected === ev.obu_id && state.trips.some(function (t) { return t.event_id === ev.event_id; })) showTrip(ev.event_id);
      else select(ev.obu_id, false, ev.event_id);
      return;
    }
    if (x && x.marker) {
      map.panTo(x.marker.getLatLng());
      x.marker.openTooltip();
    }
  }

  // Adds events not shown yet at their place in the list (newest first), keeps MAX_EVENTS.
  function addEvents(events) {
    var added = 0;
    events.forEach(function (ev) {
      if (!ev || ev.event_id == null || state.eventIds.has(ev.event_id)) return;
      var i = 0;
      while (i < state.events.length && newer(state.events[i].event, ev) <= 0) i++;
      if (i >= MAX_EVENTS) return; // older than everything kept
      var item = { event: ev, li: eventRow(ev), marker: eventMarker(ev) };
      eventList.insertBefore(item.li, i < state.events.length ? state.events[i].li : null);
      state.events.splice(i, 0, item);
      state.eventIds.add(ev.event_id);
      added++;
      // A trip of the selected vehicle just ended: its list of trips is out of date.
      if (ev.type === 'trip' && ev.obu_id === state.selected) loadTrips(ev.obu_id, null);
    });
    while (state.events.length > MAX_EVENTS) {
      var gone = state.events.pop();
      gone.li.remove();
      if (gone.marker) gone.marker.remove();
      state.eventIds.delete(gone.event.event_id);
    }
    document.body.setAttribute('data-events', String(state.events.length));
    return added;
  }

  // The newest events stored (within the retention): exactly what the list keeps, so after a
  // gap in the feed this fills it (what is shown already is recognised by its event_id).
  function loadEvents() {
    var from = '-' + Math.max(1, Math.round(state.config.retention_ms / 1000)) + 's';
    return getJSON('/api/events?from=' + encodeURIComponent(from) + '&limit=' + MAX_EVENTS).then(function (body) {
      addEvents(body.events);
    }).catch(function (e) {
      document.getElementById('events-state').textContent = 'cannot load: ' + e.message;
    });
  }

  function connectEvents() {
    var source = new EventSource(feedURL('/api/events/live'));
    var text = document.getElementById('events-state');
    var loaded = false, dropped = false;
    // The list is loaded once the feed is open (the server subscribed us before answering),
    // so no event falls between the two; again after every gap.
    source.onopen = function () {
      document.body.setAttribute('data-events-live', 'open');
      text.textContent = 'live';
      if (!loaded || dropped) { loaded = true; dropped = false; loadEvents(); }
    };
    source.onerror = function () {
      dropped = true;
      document.body.setAttribute('data-events-live', 'error');
      text.textContent = 'reconnecting…';
      // A feed that cannot open at all still gets the list.
      if (!loaded) { loaded = true; loadEvents(); }
    };
    source.addEventListener('event', function (e) {
      var ev;
      try { ev = JSON.parse(e.data); } catch (_) { return; }
      addEvents([ev]);
    });
    source.addEventListener('lagged', loadEvents);
  }

  function connectLive() {
    var source = new EventSource(feedURL('/api/live'));
    var text = document.getElementById('live-text');
    var dropped = false;
    source.onopen = function () {
      document.body.setAttribute('data-live', 'open');
      text.textContent = 'live';
      // The feed does not replay what was missed while it was down: the list catches up.
      if (dropped) { dropped = false; loadVehicles().catch(function () {}); }
    };
    source.onerror = function () {
      dropped = true;
      document.body.setAttribute('data-live', 'error');
      text.textContent = 'reconnecting…';
    };
    source.addEventListener('position', function (e) {
      var v;
      try { v = JSON.parse(e.data); } catch (_) { return; }
      var isNew = !state.vehicles.has(v.obu_id);
      if (apply(v)) {
        if (isNew) { sortList(); fitOnce(); }
        renderCounts();
      }
    });
    source.addEventListener('decommissioned', function (e) {
      var gone;
      try { gone = JSON.parse(e.data); } catch (_) { return; }
      remove(gone.obu_id);
    });
    // Missed updates: the full list catches up.
    source.addEventListener('lagged', function () { loadVehicles().catch(function () {}); });
  }

  function tick() {
    state.vehicles.forEach(function (v, id) {
      renderRow(v);
      var m = state.markers.get(id);
      if (m) tagMarker(m, v);
    });
    sortList();
    renderCounts();
    if (state.selected != null) renderSelection();
    state.events.forEach(function (x) { if (x.marker) tagEventMarker(x.marker, x.event); });
  }

  document.getElementById('sel-close').addEventListener('click', clearSelection);

  function start() {
    getJSON('/api/config').then(function (config) {
      state.config = config;
      document.getElementById('signout').hidden = apiToken() === '';
      if (config.tile_url) {
        var failed = false;
        L.tileLayer(config.tile_url, { maxZoom: 19, attribution: config.tile_attribution })
          .on('tileerror', function () {
            if (failed) return;
            failed = true;
            notice('Map tiles could not be loaded: vehicles are shown on a blank background.');
          })
          .addTo(map);
      } else {
        notice('No map tiles configured: vehicles are shown on a blank background.');
      }
      L.control.scale().addTo(map);
      new FenceControl().addTo(map);
      L.control.layers(null, { Geofences: fenceLayer, Events: eventLayer }, { position: 'topright' }).addTo(map);
      connectLive();
      connectEvents();
      followFences();
      setInterval(tick, 1000);
      return loadVehicles().then(function () {
        var id = hashVehicle();
        if (id != null && state.vehicles.has(id)) select(id, true);
      });
    }).catch(function (e) {
      if (!e.unauthorized) notice('Cannot reach the tracker: ' + e.message);
    });
  }

  start();
})();
