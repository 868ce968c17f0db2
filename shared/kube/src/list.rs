//! Paginated listing of one resource (`limit` + `continue`), page by page, so that memory
//! holds one page per concurrent list whatever the collection's size.

use kube::api::{Api, ListParams, ObjectList};
use serde::Deserialize;
use serde_json::Value;

use super::layout::Resource;
use super::{classify, status_code};
use cairn_core::{Error, Result};

#[derive(Debug, Deserialize)]
struct RawList {
    #[serde(default)]
    metadata: RawListMeta,
    #[serde(default)]
    items: Vec<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct RawListMeta {
    #[serde(rename = "resourceVersion", default)]
    resource_version: Option<String>,
    #[serde(rename = "continue", default)]
    cont: Option<String>,
}

/// Options of one list.
#[derive(Debug, Clone)]
pub struct ListOptions {
    pub page_size: u32,
    pub label_selector: Option<String>,
    /// Restarts allowed when a continue token expires (410 Gone) mid-list.
    pub restarts: u32,
}

impl Default for ListOptions {
    fn default() -> Self {
        ListOptions { page_size: 500, label_selector: None, restarts: 3 }
    }
}

/// List `resource` (in `namespace`, or everywhere), calling `on_page` with each page's items,
/// each completed with `apiVersion` and `kind` (list items may omit them). Returns the
/// list's resourceVersion. When a continue token expires the list starts again from the
/// beginning; `on_page` then sees objects again (callers key by path, so repeats replace).
pub async fn list_pages<F>(
    client: &kube::Client,
    resource: &Resource,
    namespace: Option<&str>,
    opts: &ListOptions,
    mut on_page: F,
) -> std::result::Result<String, kube::Error>
where
    F: AsyncPageSink,
{
    let url = resource.collection_url(namespace);
    let api_version = resource.api_version();
    let complete = |items: &mut Vec<Value>| {
        for item in items {
            if let Some(obj) = item.as_object_mut() {
                obj.entry("apiVersion").or_insert_with(|| Value::String(api_version.clone()));
                obj.entry("kind").or_insert_with(|| Value::String(resource.kind.clone()));
            }
        }
    };
    let mut restarts = 0;
    'restart: loop {
        let mut fetched = fetch_page(client, &url, opts, None).await;
        loop {
            let page = match fetched {
                Ok(p) => p,
                Err(e) if status_code(&e) == Some(410) && restarts < opts.restarts => {
                    restarts += 1;
                    tracing::info!(resource = %resource.name(), "continue token expired: listing again");
                    continue 'restart;
                }
                Err(e) => return Err(e),
            };
            let mut items = page.items;
            complete(&mut items);
            match page.metadata.cont.filter(|c| !c.is_empty()) {
                // The next page is on its way while this one is handed on: a large
                // collection costs the slower of the two, not their sum.
                Some(c) => {
                    let (next, ()) =
                        tokio::join!(fetch_page(client, &url, opts, Some(&c)), on_page.page(items));
                    fetched = next;
                }
                None => {
                    on_page.page(items).await;
                    return Ok(page.metadata.resource_version.unwrap_or_default());
                }
            }
        }
    }
}

async fn fetch_page(
    client: &kube::Client,
    url: &str,
    opts: &ListOptions,
    cont: Option<&str>,
) -> std::result::Result<RawList, kube::Error> {
    let mut lp = kube::api::ListParams::default().limit(opts.page_size);
    if let Some(c) = cont {
        lp = lp.continue_token(c);
    }
    if let Some(s) = &opts.label_selector {
        lp = lp.labels(s);
    }
    let req = kube::core::Request::new(url).list(&lp).map_err(kube::Error::BuildRequest)?;
    client.request(req).await
}

/// Receives pages; async so that a sink can wait on a bounded channel.
pub trait AsyncPageSink {
    fn page(&mut self, items: Vec<Value>) -> impl std::future::Future<Output = ()> + Send;
}

/// Collects everything (small lists, tests).
#[derive(Debug, Default)]
pub struct Collect(pub Vec<Value>);

impl AsyncPageSink for &mut Collect {
    async fn page(&mut self, items: Vec<Value>) {
        self.0.extend(items);
    }
}

/// GET one object as JSON; `Ok(None)` when it does not exist.
pub async fn get_object(client: &kube::Client, url: &str) -> Result<Option<Value>> {
    let req = http_get(url)?;
    match client.request::<Value>(req).await {
        Ok(v) => Ok(Some(v)),
        Err(e) if status_code(&e) == Some(404) => Ok(None),
        Err(e) => Err(classify(&format!("GET {url}"), e)),
    }
}

fn http_get(url: &str) -> Result<http::Request<Vec<u8>>> {
    http::Request::get(url)
        .body(Vec::new())
        .map_err(|e| Error::Invalid(format!("request {url}: {e}")))
}

/// A continue token that expired mid-list (410 Gone) restarts a typed list at most this often.
const TYPED_LIST_RESTARTS: u32 = 3;

/// Every item of a paginated list. `fetch` gets one page for the given parameters (a typed
/// `list`, or `list_metadata`). A continue token that expired mid-list (410 Gone) restarts
/// the list from the beginning, so the items are those of one pass.
pub async fn list_all_with<T, F, Fut>(lp: &ListParams, what: &str, mut fetch: F) -> Result<Vec<T>>
where
    T: Clone,
    F: FnMut(ListParams) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<ObjectList<T>, kube::Error>>,
{
    let mut restarts = 0;
    'pass: loop {
        let mut page_params = lp.clone();
        let mut out = Vec::new();
        loop {
            match fetch(page_params.clone()).await {
                Ok(page) => {
                    out.extend(page.items);
                    match page.metadata.continue_.filter(|c| !c.is_empty()) {
                        Some(c) => page_params = page_params.continue_token(&c),
                        None => return Ok(out),
                    }
                }
                Err(e) if status_code(&e) == Some(410) && restarts < TYPED_LIST_RESTARTS => {
                    restarts += 1;
                    tracing::info!(what, restarts, "list continue token expired; listing again");
                    continue 'pass;
                }
                Err(e) => return Err(classify(&format!("listing {what}"), e)),
            }
        }
    }
}

/// Every object of a typed list, page by page (see [`list_all_with`]).
pub async fn list_all<K>(api: &Api<K>, lp: &ListParams, what: &str) -> Result<Vec<K>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    list_all_with(lp, what, |page| {
        let api = api.clone();
        async move { api.list(&page).await }
    })
    .await
}
