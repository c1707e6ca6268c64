// The tutorial SSE server Herald is measured against: Express, a list of responses per topic, two writes
// per message, no history, no backpressure. Kept as the talk showed it, not improved.
const express = require("express");

const app = express();
app.use(express.text({ type: "*/*", limit: "1mb" }));

const topics = new Map();
let messageId = 0;

app.get("/events/:topic", (req, res) => {
  res.writeHead(200, {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    Connection: "keep-alive",
  });
  res.write("\n");
  const topic = req.params.topic;
  if (!topics.has(topic)) topics.set(topic, []);
  topics.get(topic).push(res);
  req.on("close", () => {
    topics.set(topic, (topics.get(topic) || []).filter((r) => r !== res));
  });
});

app.post("/publish/:topic", (req, res) => {
  messageId++;
  for (const r of topics.get(req.params.topic) || []) {
    r.write(`id: ${messageId}\n`);
    r.write(`data: ${req.body}\n\n`);
  }
  res.json({ id: messageId });
});

app.listen(Number(process.env.PORT || 3000), "127.0.0.1");
