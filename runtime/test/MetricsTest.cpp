//===- MetricsTest.cpp - metrics log, loss plot, progress line ------------===//

#include "moec/Runtime/Metrics.h"

#include "TestUtil.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>

using namespace moec::rt;
using namespace moec::rt::test;

namespace {

std::string readText(const std::string &path) {
  std::vector<uint8_t> bytes = readBytes(path);
  return std::string(bytes.begin(), bytes.end());
}

std::vector<std::string> lines(const std::string &text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    out.push_back(line);
  return out;
}

MetricRecord trainRecord(int64_t step, int64_t epoch, double loss) {
  MetricRecord r;
  r.step = step;
  r.epoch = epoch;
  r.loss = loss;
  r.lr = 1e-3;
  r.imagesPerSec = 1520.5;
  return r;
}

MetricRecord evalRecord(int64_t step, int64_t epoch, double top1) {
  MetricRecord r;
  r.split = "eval";
  r.step = step;
  r.epoch = epoch;
  r.loss = 0.5;
  r.top1 = top1;
  return r;
}

/// Checks that every tag is closed in order; returns "" or what is wrong.
std::string checkTags(const std::string &xml) {
  std::vector<std::string> stack;
  size_t pos = 0;
  while ((pos = xml.find('<', pos)) != std::string::npos) {
    size_t end = xml.find('>', pos);
    if (end == std::string::npos)
      return "unterminated tag at " + std::to_string(pos);
    std::string tag = xml.substr(pos + 1, end - pos - 1);
    pos = end + 1;
    if (std::count(tag.begin(), tag.end(), '"') % 2)
      return "unbalanced quotes in <" + tag + ">";
    if (tag.empty() || tag[0] == '?' || tag[0] == '!')
      continue;
    if (tag[0] == '/') {
      if (stack.empty() || stack.back() != tag.substr(1))
        return "unexpected </" + tag.substr(1) + ">";
      stack.pop_back();
      continue;
    }
    if (tag.back() == '/')
      continue;
    stack.push_back(tag.substr(0, tag.find_first_of(" \t\n")));
  }
  return stack.empty() ? "" : "unclosed <" + stack.back() + ">";
}

} // namespace

TEST(Metrics, JsonLinesParse) {
  TempDir dir;
  std::string path = dir / "metrics.jsonl";
  {
    Expected<MetricsLog> log = MetricsLog::open(path);
    ASSERT_TRUE(log) << log.error().message();
    ASSERT_FALSE(log->append(trainRecord(100, 1, 0.8123)));
    // Each line is in the file as soon as it is appended.
    EXPECT_EQ(lines(readText(path)).size(), 1u);
    MetricRecord eval = evalRecord(120, 1, 0.8125);
    eval.extra["top5"] = 0.97;
    ASSERT_FALSE(log->append(eval));
    ASSERT_FALSE(log->append(
        trainRecord(140, 2, std::numeric_limits<double>::quiet_NaN())));
  }
  std::vector<std::string> text = lines(readText(path));
  ASSERT_EQ(text.size(), 3u);
  EXPECT_EQ(text[0], "{\"step\":100,\"epoch\":1,\"loss\":0.8123,\"lr\":0.001,"
                     "\"images_per_s\":1520.5,\"split\":\"train\"}");
  for (const std::string &line : text) {
    nlohmann::json object = nlohmann::json::parse(line);
    EXPECT_TRUE(object.is_object());
    EXPECT_TRUE(object["step"].is_number_integer());
    EXPECT_TRUE(object["split"].is_string());
  }
  nlohmann::json eval = nlohmann::json::parse(text[1]);
  EXPECT_EQ(eval["split"], "eval");
  EXPECT_DOUBLE_EQ(eval["top1"].get<double>(), 0.8125);
  EXPECT_DOUBLE_EQ(eval["top5"].get<double>(), 0.97);
  EXPECT_TRUE(nlohmann::json::parse(text[2])["loss"].is_null());

  Expected<std::vector<MetricRecord>> records = readMetricsLog(path);
  ASSERT_TRUE(records) << records.error().message();
  ASSERT_EQ(records->size(), 3u);
  EXPECT_EQ((*records)[0].step, 100);
  EXPECT_EQ(*(*records)[0].loss, 0.8123);
  EXPECT_EQ(*(*records)[0].imagesPerSec, 1520.5);
  EXPECT_EQ((*records)[1].split, "eval");
  EXPECT_EQ(*(*records)[1].top1, 0.8125);
  EXPECT_EQ((*records)[1].extra.at("top5"), 0.97);
  EXPECT_TRUE(std::isnan(*(*records)[2].loss));

  // Reopening appends.
  {
    Expected<MetricsLog> log = MetricsLog::open(path);
    ASSERT_TRUE(log);
    ASSERT_FALSE(log->append(trainRecord(160, 2, 0.5)));
  }
  EXPECT_EQ(readMetricsLog(path)->size(), 4u);
  // truncate empties it.
  {
    Expected<MetricsLog> log = MetricsLog::open(path, /*truncate=*/true);
    ASSERT_TRUE(log);
  }
  EXPECT_EQ(readText(path), "");
}

TEST(Metrics, TornLinesAndErrors) {
  TempDir dir;
  std::string path = dir / "m.jsonl";
  writeText(path, formatMetricRecord(trainRecord(1, 0, 2.0)) + "\n" +
                      "{\"step\":2,\"epo");
  // A reader skips the cut-off line; reopening the log cuts it off.
  Expected<std::vector<MetricRecord>> records = readMetricsLog(path);
  ASSERT_TRUE(records) << records.error().message();
  EXPECT_EQ(records->size(), 1u);
  {
    Expected<MetricsLog> log = MetricsLog::open(path);
    ASSERT_TRUE(log);
    ASSERT_FALSE(log->append(trainRecord(2, 0, 1.0)));
  }
  std::vector<std::string> text = lines(readText(path));
  ASSERT_EQ(text.size(), 2u);
  EXPECT_EQ(text[1], formatMetricRecord(trainRecord(2, 0, 1.0)));

  writeText(path, formatMetricRecord(trainRecord(1, 0, 2.0)) + "\nnot json\n");
  records = readMetricsLog(path);
  ASSERT_FALSE(records);
  EXPECT_EQ(records.error().code(), ErrorCode::Data);
  EXPECT_TRUE(records.error().message().rfind(path + ":2: invalid JSON", 0) ==
              0)
      << records.error().message();

  writeText(path, "{\"epoch\":1,\"split\":\"train\"}\n");
  records = readMetricsLog(path);
  ASSERT_FALSE(records);
  EXPECT_EQ(records.error().message(), path + ":1: missing \"step\"");
  EXPECT_FALSE(readMetricsLog(dir / "absent.jsonl"));
}

TEST(Metrics, TruncateForResume) {
  TempDir dir;
  std::string path = dir / "m.jsonl";
  EXPECT_FALSE(truncateMetricsLog(path, 10)); // no log yet: nothing to do
  std::string text;
  for (int64_t step : {10, 20, 30, 40})
    text += formatMetricRecord(trainRecord(step, step / 20, 1.0)) + "\n";
  writeText(path, text + "{\"step\":5");
  ASSERT_FALSE(truncateMetricsLog(path, 25));
  Expected<std::vector<MetricRecord>> records = readMetricsLog(path);
  ASSERT_TRUE(records);
  ASSERT_EQ(records->size(), 2u);
  EXPECT_EQ((*records)[1].step, 20);
}

TEST(Metrics, LossPlotSvg) {
  std::vector<MetricRecord> records;
  for (int64_t step = 1; step <= 300; ++step)
    records.push_back(trainRecord(step, (step - 1) / 100 + 1,
                                  2.3 * std::exp(-double(step) / 80)));
  records.push_back(
      trainRecord(301, 3, std::numeric_limits<double>::infinity()));
  records.push_back(evalRecord(100, 1, 0.61));
  records.push_back(evalRecord(200, 2, 0.74));
  records.push_back(evalRecord(300, 3, 0.8123));

  std::string svg = lossPlotSvg(records);
  EXPECT_EQ(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0), 0u);
  EXPECT_NE(svg.find(">Training loss</text>"), std::string::npos);
  EXPECT_NE(svg.find(">Eval top-1 accuracy</text>"), std::string::npos);
  EXPECT_NE(svg.find(">step</text>"), std::string::npos);
  EXPECT_NE(svg.find(">epoch</text>"), std::string::npos);
  EXPECT_EQ(svg.find("no data"), std::string::npos);
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  EXPECT_EQ(svg.find("inf"), std::string::npos);
  EXPECT_EQ(std::count(svg.begin(), svg.end(), '\n') > 50, true);
  EXPECT_EQ(checkTags(svg), "");
  // Tick labels: steps 0..300, loss from 0, accuracy in percent.
  EXPECT_NE(svg.find(">300</text>"), std::string::npos);
  EXPECT_NE(svg.find(">0.0</text>"), std::string::npos);
  EXPECT_NE(svg.find(">80</text>"), std::string::npos);
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");

  TempDir dir;
  std::string path = dir / "plot.svg";
  ASSERT_FALSE(writeLossPlotSvg(records, path));
  EXPECT_EQ(readText(path), svg);
  if (std::system("command -v xmllint >/dev/null 2>&1") == 0) {
    EXPECT_EQ(std::system(("xmllint --noout '" + path + "'").c_str()), 0);
  }
  if (std::system("command -v rsvg-convert >/dev/null 2>&1") == 0) {
    EXPECT_EQ(
        std::system(
            ("rsvg-convert -o '" + path + ".png' '" + path + "'").c_str()),
        0);
  }

  // Without records both panels say so, still well-formed.
  std::string empty = lossPlotSvg({});
  EXPECT_EQ(checkTags(empty), "");
  size_t first = empty.find("no data");
  ASSERT_NE(first, std::string::npos);
  EXPECT_NE(empty.find("no data", first + 1), std::string::npos);
  // One point per panel.
  std::string single =
      lossPlotSvg({trainRecord(0, 0, 1.0), evalRecord(0, 0, 1.0)});
  EXPECT_EQ(checkTags(single), "");
  EXPECT_EQ(single.find("nan"), std::string::npos);
  // Absurd but finite values do not produce NaN coordinates.
  std::string huge =
      lossPlotSvg({trainRecord(0, 0, -1e308), trainRecord(1, 0, 1e308)});
  EXPECT_EQ(checkTags(huge), "");
  EXPECT_EQ(huge.find("nan"), std::string::npos);
}

TEST(Metrics, ProgressLine) {
  EXPECT_EQ(formatProgress(3, 25, 12800, 60000, 0.8123, 1520, 151, 12),
            "epoch 3/25 [##..........] 12800/60000 loss 0.8123 1520 img/s "
            "ETA 2:31");
  EXPECT_EQ(formatProgress(1, 1, 10, 10, 0.5, 99.6, 0),
            "epoch 1/1 [####################] 10/10 loss 0.5000 100 img/s "
            "ETA 0:00");
  EXPECT_EQ(formatProgress(1, 2, 0, 0, std::nan(""), 0, -1, 4),
            "epoch 1/2 [....] 0/0 loss nan 0 img/s ETA --:--");
  EXPECT_EQ(formatDuration(3723), "1:02:03");
  EXPECT_EQ(formatDuration(59.6), "1:00");
  EXPECT_EQ(formatDuration(std::numeric_limits<double>::infinity()), "--:--");
}
