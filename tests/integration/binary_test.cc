// The megaserve binary as a user runs it: subcommands, configuration errors, start-up, signals.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <regex>

#include "jobs/job_queue.h"
#include "jobs/webhook_signature.h"
#include "store/migrations.h"
#include "test_support.h"

namespace megaserve::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::chrono_literals;

std::string DataDir() { return ::testing::TempDir() + "/megaserve_data"; }

TEST(BinaryTest, VersionPrintsVersion) {
  Process p({"version"});
  EXPECT_EQ(p.Wait(), 0);
  EXPECT_TRUE(std::regex_search(p.Stdout(), std::regex(R"(^megaserve \d+\.\d+\.\d+ \(commit)")))
      << p.Stdout();
}

TEST(BinaryTest, HelpListsSubcommands) {
  Process p({"--help"});
  EXPECT_EQ(p.Wait(), 0);
  for (const char* s : {"serve", "version", "config"}) EXPECT_THAT(p.Stdout(), HasSubstr(s));
}

TEST(BinaryTest, WebhooksNewSecretPrintsAFreshSecret) {
  Process a({"webhooks", "new-secret"});
  Process b({"webhooks", "new-secret"});
  ASSERT_EQ(a.Wait(), 0);
  ASSERT_EQ(b.Wait(), 0);
  std::string secret = a.Stdout();
  ASSERT_TRUE(!secret.empty() && secret.back() == '\n') << secret;
  secret.pop_back();
  EXPECT_TRUE(secret.starts_with("whsec_")) << secret;
  auto parsed = jobs::WebhookSecret::Parse(secret);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->key().size(), jobs::WebhookSecret::kGeneratedKeyBytes);
  EXPECT_NE(a.Stdout(), b.Stdout());
}

TEST(BinaryTest, ServeStartsAnswersAndStopsCleanlyOnSigterm) {
  Process p({"serve", "--listen", "127.0.0.1:0", "--data-dir", DataDir(), "--threads", "2"},
            {"MEGASERVE_LOG_ACCESS=false"});
  unsigned short port = p.WaitReady();
  ASSERT_NE(port, 0) << p.Stderr();
  RawClient idle(port);
  auto r = idle.Roundtrip(Get("/readyz"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = idle.Roundtrip(Get("/metrics"));
  ASSERT_TRUE(r);
  EXPECT_THAT(r->body, HasSubstr("megaserve_build_info{"));
  EXPECT_THAT(r->body, HasSubstr("process_resident_memory_bytes"));

  p.Signal(SIGTERM);
  EXPECT_EQ(p.Wait(), 0) << p.Stderr();
  EXPECT_TRUE(idle.WaitClosed());
  EXPECT_THAT(p.Stderr(), HasSubstr("received SIGTERM"));
  RawClient late(port);
  EXPECT_FALSE(late.connected());
}

TEST(BinaryTest, SigintAlsoStopsCleanly) {
  Process p({"serve", "--listen", "127.0.0.1:0", "--data-dir", DataDir()});
  ASSERT_NE(p.WaitReady(), 0) << p.Stderr();
  p.Signal(SIGINT);
  EXPECT_EQ(p.Wait(), 0) << p.Stderr();
}

TEST(BinaryTest, AccessLogLinesAreJson) {
  Process p({"serve", "--listen", "127.0.0.1:0", "--data-dir", DataDir()});
  unsigned short port = p.WaitReady();
  ASSERT_NE(port, 0);
  RawClient c(port);
  ASSERT_TRUE(c.Roundtrip(Get("/healthz", "X-Request-Id: trace-me-1\r\nUser-Agent: t\"q\r\n")));
  p.Signal(SIGTERM);
  ASSERT_EQ(p.Wait(), 0);
  std::string out = p.Stdout();
  EXPECT_THAT(out, HasSubstr(R"("request_id":"trace-me-1")"));
  EXPECT_THAT(out,
              HasSubstr(R"("method":"GET","path":"/healthz","route":"/healthz","status":200)"));
  EXPECT_THAT(out, HasSubstr(R"("user_agent":"t\"q")"));
}

TEST(BinaryTest, AccessLogSamplingKeepsErrors) {
  Process p({"serve", "--listen", "127.0.0.1:0", "--data-dir", DataDir(), "--set",
             "log.access_sample=0"});
  unsigned short port = p.WaitReady();
  ASSERT_NE(port, 0);
  RawClient c(port);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(c.Roundtrip(Get("/healthz")));
  ASSERT_TRUE(c.Roundtrip(Get("/no-such-route", "X-Request-Id: the-404\r\n")));
  p.Signal(SIGTERM);
  ASSERT_EQ(p.Wait(), 0);
  std::string out = p.Stdout();
  EXPECT_THAT(out, Not(HasSubstr(R"("path":"/healthz")")));
  EXPECT_THAT(out, HasSubstr(R"("request_id":"the-404")"));
  EXPECT_THAT(out, HasSubstr(R"("status":404)"));
}

TEST(BinaryTest, ConfigErrorsStopStartupNamingKeyAndSource) {
  std::string file = ::testing::TempDir() + "/bad.toml";
  std::ofstream(file) << "[server]\nthreads = 5000\n";
  Process p({"serve", "--config", file, "--data-dir", DataDir()});
  EXPECT_EQ(p.Wait(), 2);
  EXPECT_THAT(p.Stderr(), HasSubstr("server.threads"));
  EXPECT_THAT(p.Stderr(), HasSubstr(file + ":2"));

  Process env({"serve", "--data-dir", DataDir()}, {"MEGASERVE_SERVER_MAX_CONNECTIONS=lots"});
  EXPECT_EQ(env.Wait(), 2);
  EXPECT_THAT(env.Stderr(), HasSubstr("server.max_connections"));
  EXPECT_THAT(env.Stderr(), HasSubstr("MEGASERVE_SERVER_MAX_CONNECTIONS"));

  Process flag({"serve", "--listen", "127.0.0.1:99999", "--data-dir", DataDir()});
  EXPECT_EQ(flag.Wait(), 2);
  EXPECT_THAT(flag.Stderr(), HasSubstr("server.listen"));
  EXPECT_THAT(flag.Stderr(), HasSubstr("--listen"));
}

TEST(BinaryTest, PortInUseIsAClearError) {
  // A listener without SO_REUSEPORT holds the port, so megaserve cannot share it.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  std::string port = std::to_string(ntohs(addr.sin_port));
  Process p({"serve", "--listen", "127.0.0.1:" + port, "--data-dir", DataDir()});
  EXPECT_EQ(p.Wait(), 2);
  EXPECT_THAT(p.Stderr(), HasSubstr("cannot listen on 127.0.0.1:" + port));
  close(fd);
}

TEST(BinaryTest, MigrateAppliesOnceThenReportsUpToDate) {
  std::string dir = ::testing::TempDir() + "/migrate_" + std::to_string(getpid());
  Process first({"migrate", "--data-dir", dir});
  ASSERT_EQ(first.Wait(), 0) << first.Stderr();
  EXPECT_THAT(first.Stdout(), HasSubstr("applied     1  create_jobs"));
  Process again({"migrate", "--data-dir", dir});
  ASSERT_EQ(again.Wait(), 0) << again.Stderr();
  EXPECT_THAT(again.Stdout(), HasSubstr("up to date at version"));
  Process status({"migrate", "--status", "--data-dir", dir});
  ASSERT_EQ(status.Wait(), 0);
  EXPECT_THAT(status.Stdout(), HasSubstr("0 pending"));
  Process bad({"migrate", "--set", "store.url=postgresql://u:pw@127.0.0.1:1/x"});
  EXPECT_EQ(bad.Wait(), 2);
  EXPECT_THAT(bad.Stdout() + bad.Stderr(), Not(HasSubstr(":pw@")));
}

TEST(BinaryTest, WorkerRunsJobsFromItsQueueAndStopsOnSigterm) {
  core::Config config;
  config.data_dir = FreshDataDir();
  auto db = store::OpenConfiguredStore(config);
  ASSERT_TRUE(db.ok()) << db.status().ToString();
  jobs::JobQueue queue(**db, "test");
  jobs::NewJob job;
  job.type = "noop";
  job.queue = "batch";
  auto queued = queue.Enqueue(job);
  ASSERT_TRUE(queued.ok());
  job.queue = "other";
  auto elsewhere = queue.Enqueue(job);
  ASSERT_TRUE(elsewhere.ok());

  Process worker({"worker", "--queue", "batch", "--data-dir", config.data_dir});
  jobs::JobStatus status = jobs::JobStatus::kQueued;
  for (int i = 0; i < 500 && status != jobs::JobStatus::kSucceeded; ++i) {
    std::this_thread::sleep_for(10ms);
    auto j = queue.Get(queued->id);
    ASSERT_TRUE(j.ok());
    status = j->status;
  }
  EXPECT_EQ(status, jobs::JobStatus::kSucceeded) << worker.Stderr();
  EXPECT_EQ(queue.Get(elsewhere->id)->status, jobs::JobStatus::kQueued);  // not its queue
  worker.Signal(SIGTERM);
  EXPECT_EQ(worker.Wait(), 0) << worker.Stderr();
  EXPECT_THAT(worker.Stderr(), HasSubstr("worker on queue \"batch\""));
}

TEST(BinaryTest, ConfigPrintShowsSourcesAndMasksSecrets) {
  std::string file = ::testing::TempDir() + "/good.toml";
  std::ofstream(file) << "[metrics]\nbearer_token = \"hunter2-very-secret\"\n";
  Process p({"config", "print", "--config", file, "--listen", "0.0.0.0:9000"},
            {"MEGASERVE_SERVER_THREADS=3"});
  ASSERT_EQ(p.Wait(), 0) << p.Stderr();
  std::string out = p.Stdout();
  EXPECT_THAT(out, Not(HasSubstr("hunter2")));
  EXPECT_THAT(out, HasSubstr("********"));
  EXPECT_THAT(out, HasSubstr("0.0.0.0:9000"));
  EXPECT_THAT(out, HasSubstr("flag --listen"));
  EXPECT_THAT(out, HasSubstr("env MEGASERVE_SERVER_THREADS"));
  EXPECT_THAT(out, HasSubstr(file + ":2"));
}

}  // namespace
}  // namespace megaserve::testing
