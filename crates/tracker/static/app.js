// fleetstream live map: every vehicle as a marker, moved by the live feed (/api/live, SSE);
// a list with last-seen times; a vehicle's recent trail on click. Plain script, no build step.
//
// Markers carry data-obu-id, data-seq, data-lat and data-lon (tests read them), and are pure
// CSS, so they show even when no map tile can be loaded.
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
  };

  var map = L.map('map', { worldCopyJump: true, preferCanvas: false }).setView([20, 0], 2);
  var list = document.getElementById('vehicles');

  function getJSON(url) {
    return fetch(url, { headers: { Accept: 'application/json' } }).then(function (r) {
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

  // Applies a position if it is newer than what is shown (late and replayed ones are not).
  function apply(v) {
    var known = state.vehicles.get(v.obu_id);
    if (v.out_of_order || (known && known.seq >= v.seq)) return false;
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
    var previous = state.selected;
    state.selected = null;
    if (previous != null && state.vehicles.has(previous)) {
      tagMarker(state.markers.get(previous), state.vehicles.get(previous));
      renderRow(state.vehicles.get(previous));
    }
    renderSelection();
  }

  function select(id, pan) {
    clearSelection();
    state.selected = id;
    var v = state.vehicles.get(id);
    if (!v) return;
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

  function connectLive() {
    var source = new EventSource('/api/live');
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
  }

  document.getElementById('sel-close').addEventListener('click', clearSelection);

  getJSON('/api/config').then(function (config) {
    state.config = config;
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
    connectLive();
    setInterval(tick, 1000);
    return loadVehicles().then(function () {
      var id = hashVehicle();
      if (id != null && state.vehicles.has(id)) select(id, true);
    });
  }).catch(function (e) {
    notice('Cannot reach the tracker: ' + e.message);
  });
})();
