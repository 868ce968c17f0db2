// End-to-end test of `cairn ui` in headless Chromium (Debian's, driven by playwright-core).
// Run by tests/tests/ui.rs, which builds the repository with the real jobs, starts two UIs
// (one with the identity, one with the write key only) and passes what to expect in the
// environment. Screenshots and downloads land in CAIRN_UI_ARTIFACTS. Exits non-zero, naming
// the step, on the first failed expectation.
"use strict";

const assert = require("node:assert/strict");
const path = require("node:path");

const E = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const { chromium } = require(E("CAIRN_PLAYWRIGHT"));
const URL_FULL = E("CAIRN_UI_URL");
const URL_LOCKED = E("CAIRN_UI_URL_LOCKED");
const OUT = E("CAIRN_UI_ARTIFACTS");
const NS = E("CAIRN_UI_NS");
const DEPLOY = E("CAIRN_UI_DEPLOYMENT");
const NODE = E("CAIRN_UI_NODE");
const SNAP1 = E("CAIRN_UI_SNAP1");
const SNAP2 = E("CAIRN_UI_SNAP2");
const PVC_SOURCE = E("CAIRN_UI_PVC_SOURCE");
const PVC_DIR = E("CAIRN_UI_PVC_DIR");
const PVC_FILE = E("CAIRN_UI_PVC_FILE");

let step = "start";
let page;

async function settled() {
  await page.waitForFunction(() => document.body.dataset.ready === location.hash, null, { timeout: 20000 });
  const err = await page.locator("[data-testid=error]").count();
  if (err) throw new Error(`page shows an error: ${await page.locator("[data-testid=error]").first().textContent()}`);
}

async function shot(name) {
  await page.screenshot({ path: path.join(OUT, `${name}.png`), fullPage: true });
}

async function textOf(selector) {
  const loc = page.locator(selector).first();
  await loc.waitFor({ timeout: 10000 });
  return (await loc.textContent()).trim();
}

async function click(locator) {
  await locator.first().click({ timeout: 10000 });
  await settled();
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CAIRN_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 860 } });
  page = await context.newPage();
  const consoleErrors = [];
  page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  try {
    step = "timeline";
    await page.goto(`${URL_FULL}/#/`);
    await settled();
    const dots = await page.locator("[data-testid=timeline-dot]").count();
    assert.ok(dots >= 4, `timeline shows ${dots} snapshots, expected at least 4`);
    const lanes = await page.locator("svg.timeline text.lane").allTextContents();
    for (const want of ["etcd", "manifests", PVC_SOURCE]) {
      assert.ok(lanes.some((l) => l.endsWith(want)), `timeline has no lane for ${want}: ${lanes}`);
    }
    assert.equal(await textOf("#access"), "identity: contents visible");
    await shot("01-timeline");

    step = "manifest snapshots of the timeline";
    await click(page.locator("svg.timeline text.lane", { hasText: "manifests" }));
    await click(page.locator(`[data-testid=snapshot-table] a[href="#/s/${SNAP1}"]`));
    assert.match(await textOf("[data-testid=snapshot-id]"), new RegExp(SNAP1));

    step = "the Deployment at the first time";
    await click(page.locator("[data-testid='tab-view/deployments']"));
    await page.locator("[data-testid=filter]").fill(DEPLOY);
    await page.locator("[data-testid=filter]").press("Enter");
    await settled();
    const row = `[data-testid=row][data-name="${DEPLOY}"]`;
    const before = await textOf(`${row} [data-testid=replicas]`);
    assert.match(before, /^\d+ \/ 2$/, `replicas at the first time: ${before}`);
    await shot("02-deployment-first");

    step = "the same view a snapshot later";
    await click(page.locator("a", { hasText: "later snapshot ›" }));
    assert.match(await textOf("[data-testid=snapshot-id]"), new RegExp(SNAP2));
    const after = await textOf(`${row} [data-testid=replicas]`);
    assert.match(after, /^\d+ \/ 5$/, `replicas at the second time: ${after}`);
    await shot("03-deployment-second");

    step = "the Deployment's YAML and its neighbours";
    await click(page.locator(`${row} a`, { hasText: DEPLOY }));
    const yaml = await textOf("[data-testid=yaml]");
    assert.match(yaml, /replicas: 5/);
    assert.match(yaml, new RegExp(`name: ${DEPLOY}`));
    assert.match(await textOf("[data-testid=neighbors]"), /earlier: .*different/);
    await shot("04-object");

    step = "the diff between the two times";
    await click(page.locator("[data-testid=neighbors] a", { hasText: "diff" }));
    const item = page.locator("[data-testid=diff-item]", { hasText: DEPLOY });
    await item.first().waitFor({ timeout: 10000 });
    const fields = await item.first().textContent();
    assert.match(fields, /spec\.replicas\s*2\s*→\s*5/, `diff of ${DEPLOY}: ${fields}`);
    await click(page.locator("a", { hasText: "show all" }));
    const all = await page.locator("[data-testid=diff-item]").allTextContents();
    assert.ok(all.some((t) => t.includes(DEPLOY)), "the whole diff lists the Deployment");
    await shot("05-diff");

    step = "nodes at this time";
    await page.goto(`${URL_FULL}/#/s/${SNAP2}/view/nodes`);
    await settled();
    const nodeRow = page.locator(`[data-testid=row][data-name="${NODE}"]`);
    await nodeRow.waitFor({ timeout: 10000 });
    const nodeText = await nodeRow.textContent();
    assert.match(nodeText, /True/);
    assert.match(nodeText, /16Gi/);
    await shot("06-nodes");

    step = "a file of the PVC snapshot";
    await page.goto(`${URL_FULL}/#/?source=${encodeURIComponent(PVC_SOURCE)}`);
    await settled();
    await click(page.locator("[data-testid=snapshot-table] td a"));
    await click(page.locator("[data-testid=tab-files]"));
    await click(page.locator("[data-testid=file-row] a", { hasText: `${PVC_DIR}/` }));
    const fileRow = page.locator(`[data-testid=file-row][data-name="${PVC_FILE}"]`);
    const [download] = await Promise.all([
      page.waitForEvent("download", { timeout: 15000 }),
      fileRow.locator("[data-testid=download]").click(),
    ]);
    assert.equal(download.suggestedFilename(), PVC_FILE);
    await download.saveAs(path.join(OUT, "download-file"));
    const [tar] = await Promise.all([
      page.waitForEvent("download", { timeout: 15000 }),
      page.locator("[data-testid=download-tar]").click(),
    ]);
    assert.equal(tar.suggestedFilename(), `${PVC_DIR}.tar`);
    await tar.saveAs(path.join(OUT, "download-folder.tar"));
    await shot("07-files");

    step = "metadata only without the identity";
    await page.goto(`${URL_LOCKED}/#/`);
    await settled();
    assert.equal(await textOf("#access"), "metadata only");
    assert.match(await textOf("[data-testid=metadata-only]"), /no identity given.*metadata only/);
    assert.ok((await page.locator("[data-testid=timeline-dot]").count()) >= 4, "the timeline needs no identity");
    await page.goto(`${URL_LOCKED}/#/s/${SNAP2}/view/deployments?q=${DEPLOY}`);
    await settled();
    await page.locator(row).waitFor({ timeout: 10000 });
    assert.equal(await page.locator(`${row} [data-testid=replicas]`).count(), 0, "replicas need the identity");
    await click(page.locator(`${row} a`, { hasText: DEPLOY }));
    assert.equal(await page.locator("[data-testid=yaml]").count(), 0);
    assert.match(await page.locator("main").textContent(), /encrypted: it needs the identity/);
    assert.deepEqual(consoleErrors, [], "the page logged errors");
    // The API refuses contents itself, not only the page (a 403 the console logs: expected).
    const denied = await page.evaluate(async (snap) => {
      const r = await fetch(`/api/file?snap=${snap}&path=cluster/version.json`);
      return { status: r.status, body: await r.text() };
    }, SNAP2);
    assert.equal(denied.status, 403);
    assert.match(denied.body, /metadata only/);
    await shot("08-metadata-only");
    console.log("ui e2e: all steps passed");
  } catch (e) {
    await shot(`failed-${step.replace(/\W+/g, "-")}`).catch(() => {});
    console.error(`ui e2e: step "${step}" failed: ${e.stack || e}`);
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error(`ui e2e: ${e.stack || e}`);
  process.exit(1);
});
