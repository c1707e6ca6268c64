// Plain JS: subscribe to Herald topics in any page (no library, no build step).
// The browser reconnects by itself with Last-Event-ID; this only adds a reopen when the hub refused a
// reconnect (the browser then stops trying), resuming from the last id seen.
function subscribe(hub, topics, onData) {
  let lastId = null;
  let source = null;
  const open = () => {
    const params = new URLSearchParams();
    topics.forEach((t) => params.append("topic", t));
    if (lastId) params.set("lastEventId", lastId);
    source = new EventSource(`${hub}/events?${params}`);
    source.onmessage = (e) => {
      lastId = e.lastEventId || lastId;
      let data = e.data; // always a string
      try { data = JSON.parse(e.data); } catch { /* plain text */ }
      onData(data, e.lastEventId);
    };
    source.addEventListener("herald.gap", (e) => console.warn("history gap", JSON.parse(e.data)));
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) setTimeout(open, 3000);
    };
  };
  open();
  return () => source.close(); // call to unsubscribe
}

// Example: subscribe("http://127.0.0.1:8080", ["news"], (data, id) => console.log(id, data));
