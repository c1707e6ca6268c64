//! Many subscribers and publishers on one node: every subscriber gets exactly its topics' messages.

use crate::helpers::{fan_out_is_exact, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_every_message_of_its_topics_once_in_order() {
    let app = spawn_app().await;
    fan_out_is_exact(&[&app], 50, 1000, 4).await;
}
