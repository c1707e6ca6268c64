// Plain JS: subscribe to Herald topics in any page (no library, no build step).
// The browser reconnects by itself with Last-Event-ID; this only adds a reopen when the hub refused a
// reconnect (the browser then stops trying), resuming from the last id seen. With several topics it asks
// for envelope=json, so onData is told which topic each event is from.
function subscribe(hub, topics, onData) {
  let lastId = null;
  let source = null;
  const open = () => {
    const params = new URLSearchParams();
    topics.forEach((t) => params.append("topic", t));
    params.set("envelope", "json");
    if (lastId) params.set("lastEventId", lastId);
    source = new EventSource(`${hub}/events?${params}`);
    source.onmessage = (e) => {
      lastId = e.lastEventId || lastId; // the stream's position (a composite with several topics)
      // The envelope: the event's topic, its own id in that topic, and the published string.
      const { topic, id, data: text } = JSON.parse(e.data);
      let data = text;
      try { data = JSON.parse(text); } catch { /* plain text */ }
      onData(data, id, topic);
    };
    source.addEventListener("herald.gap", (e) => console.warn("history gap", JSON.parse(e.data)));
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) setTimeout(open, 3000);
    };
  };
  open();
  return () => source.close(); // call to unsubscribe
}

// Example: subscribe("http://127.0.0.1:8080", ["news", "prices"], (data, id, topic) => console.log(topic, id, data));
