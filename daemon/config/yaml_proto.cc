#include "daemon/config/yaml_proto.h"

#include <cstdint>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/reflection.h"
#include "walshift/v1/options.pb.h"

namespace walshift::config {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::EnumValueDescriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

std::string Where(const YAML::Node& node) {
  YAML::Mark m = node.Mark();
  if (m.line < 0) return "";
  return absl::StrCat(" (line ", m.line + 1, ")");
}

const char* KindName(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Scalar:
      return "a scalar";
    case YAML::NodeType::Null:
      return "empty";
    default:
      return "undefined";
  }
}

const EnumValueDescriptor* FindEnumValue(const google::protobuf::EnumDescriptor* e, absl::string_view text) {
  std::string upper = absl::AsciiStrToUpper(text);
  for (int i = 0; i < e->value_count(); ++i) {
    const EnumValueDescriptor* v = e->value(i);
    const std::string& name = v->name();
    if (name == upper) return v;
    if (name.size() > upper.size() && name[name.size() - upper.size() - 1] == '_' &&
        name.compare(name.size() - upper.size(), upper.size(), upper) == 0)
      return v;
  }
  return nullptr;
}

std::string EnumChoices(const google::protobuf::EnumDescriptor* e) {
  // The values' common prefix up to an underscore (ON_ERROR_ of ON_ERROR_DEAD_LETTER) is left
  // out, as FindEnumValue accepts the names without it.
  std::string prefix = e->value_count() > 0 ? e->value(0)->name() : "";
  for (int i = 1; i < e->value_count(); ++i) {
    const std::string& name = e->value(i)->name();
    size_t n = 0;
    while (n < prefix.size() && n < name.size() && prefix[n] == name[n]) ++n;
    prefix.resize(n);
  }
  prefix.resize(prefix.rfind('_') == std::string::npos ? 0 : prefix.rfind('_') + 1);
  std::string out;
  for (int i = 0; i < e->value_count(); ++i) {
    const std::string& name = e->value(i)->name();
    if (absl::EndsWith(name, "_UNSET") || absl::EndsWith(name, "_UNSPECIFIED")) continue;  // the field's absence
    absl::StrAppend(&out, out.empty() ? "" : ", ", absl::AsciiStrToLower(name.substr(prefix.size())));
  }
  return out;
}

// Sets a singular or appends a repeated scalar field from a YAML scalar.
void SetScalar(const YAML::Node& node, Message* msg, const FieldDescriptor* field, const std::string& path,
               std::vector<std::string>* errors) {
  if (!node.IsScalar()) {
    errors->push_back(absl::StrCat(path, ": expected a value, found ", KindName(node), Where(node)));
    return;
  }
  const Reflection* r = msg->GetReflection();
  const std::string& text = node.Scalar();
  bool rep = field->is_repeated();
  auto bad = [&](const char* what) {
    errors->push_back(absl::StrCat(path, ": '", text, "' is not ", what, Where(node)));
  };
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_STRING:
      rep ? r->AddString(msg, field, text) : r->SetString(msg, field, text);
      return;
    case FieldDescriptor::CPPTYPE_BOOL: {
      bool v;
      std::string lower = absl::AsciiStrToLower(text);
      if (lower == "true" || lower == "yes" || lower == "on")
        v = true;
      else if (lower == "false" || lower == "no" || lower == "off")
        v = false;
      else
        return bad("true or false");
      rep ? r->AddBool(msg, field, v) : r->SetBool(msg, field, v);
      return;
    }
    case FieldDescriptor::CPPTYPE_UINT32: {
      uint32_t v;
      if (!absl::SimpleAtoi(text, &v)) return bad("a non-negative whole number");
      rep ? r->AddUInt32(msg, field, v) : r->SetUInt32(msg, field, v);
      return;
    }
    case FieldDescriptor::CPPTYPE_INT32: {
      int32_t v;
      if (!absl::SimpleAtoi(text, &v)) return bad("a whole number");
      rep ? r->AddInt32(msg, field, v) : r->SetInt32(msg, field, v);
      return;
    }
    case FieldDescriptor::CPPTYPE_UINT64: {
      uint64_t v;
      if (!absl::SimpleAtoi(text, &v)) return bad("a non-negative whole number");
      rep ? r->AddUInt64(msg, field, v) : r->SetUInt64(msg, field, v);
      return;
    }
    case FieldDescriptor::CPPTYPE_INT64: {
      int64_t v;
      if (!absl::SimpleAtoi(text, &v)) return bad("a whole number");
      rep ? r->AddInt64(msg, field, v) : r->SetInt64(msg, field, v);
      return;
    }
    case FieldDescriptor::CPPTYPE_DOUBLE: {
      double v;
      if (!absl::SimpleAtod(text, &v)) return bad("a number");
      rep ? r->AddDouble(msg, field, v) : r->SetDouble(msg, field, v);
      return;
    }
    case FieldDescriptor::CPPTYPE_FLOAT: {
      float v;
      if (!absl::SimpleAtof(text, &v)) return bad("a number");
      rep ? r->AddFloat(msg, field, v) : r->SetFloat(msg, field, v);
      return;
    }
    case FieldDescriptor::CPPTYPE_ENUM: {
      const EnumValueDescriptor* v = FindEnumValue(field->enum_type(), text);
      if (v == nullptr) {
        errors->push_back(
            absl::StrCat(path, ": '", text, "' is not one of ", EnumChoices(field->enum_type()), Where(node)));
        return;
      }
      rep ? r->AddEnum(msg, field, v) : r->SetEnum(msg, field, v);
      return;
    }
    case FieldDescriptor::CPPTYPE_MESSAGE:
      break;
  }
  errors->push_back(absl::StrCat(path, ": unsupported field type"));
}

void SetField(const YAML::Node& node, Message* msg, const FieldDescriptor* field, const std::string& path,
              std::vector<std::string>* errors);

void FillMessageOrScalar(const YAML::Node& node, Message* sub, const std::string& path,
                         std::vector<std::string>* errors) {
  const std::string& scalar_field = sub->GetDescriptor()->options().GetExtension(v1::scalar_field);
  if (node.IsScalar() && !scalar_field.empty()) {
    const FieldDescriptor* f = sub->GetDescriptor()->FindFieldByName(scalar_field);
    if (f != nullptr) {
      SetScalar(node, sub, f, path, errors);
      return;
    }
  }
  ParseYamlInto(node, sub, path, errors);
}

void SetField(const YAML::Node& node, Message* msg, const FieldDescriptor* field, const std::string& path,
              std::vector<std::string>* errors) {
  const Reflection* r = msg->GetReflection();
  if (field->is_map()) {
    if (!node.IsMap()) {
      if (!node.IsNull())
        errors->push_back(absl::StrCat(path, ": expected a mapping, found ", KindName(node), Where(node)));
      return;
    }
    const Descriptor* entry = field->message_type();
    const FieldDescriptor* key_f = entry->FindFieldByName("key");
    const FieldDescriptor* val_f = entry->FindFieldByName("value");
    std::set<std::string> seen;
    for (const auto& kv : node) {
      std::string key = kv.first.Scalar();
      if (!seen.insert(key).second) {
        errors->push_back(absl::StrCat(JoinPath(path, key), ": given twice", Where(kv.first)));
        continue;
      }
      Message* e = r->AddMessage(msg, field);
      e->GetReflection()->SetString(e, key_f, key);
      std::string sub_path = JoinPath(path, key);
      if (val_f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        FillMessageOrScalar(kv.second, e->GetReflection()->MutableMessage(e, val_f), sub_path, errors);
      } else {
        SetScalar(kv.second, e, val_f, sub_path, errors);
      }
    }
    return;
  }
  if (field->is_repeated()) {
    if (node.IsNull()) return;
    auto add_one = [&](const YAML::Node& item, const std::string& item_path) {
      if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        FillMessageOrScalar(item, r->AddMessage(msg, field), item_path, errors);
      } else {
        SetScalar(item, msg, field, item_path, errors);
      }
    };
    if (node.IsSequence()) {
      for (size_t i = 0; i < node.size(); ++i) add_one(node[i], IndexPath(path, i));
    } else {
      add_one(node, path);  // a single item stands for a one-item list
    }
    return;
  }
  if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
    FillMessageOrScalar(node, r->MutableMessage(msg, field), path, errors);
    return;
  }
  if (node.IsNull()) {
    errors->push_back(absl::StrCat(path, ": a value is required", Where(node)));
    return;
  }
  SetScalar(node, msg, field, path, errors);
}

void CheckRequired(const YAML::Node& node, const Message& msg, const std::string& path,
                   std::vector<std::string>* errors) {
  const Descriptor* d = msg.GetDescriptor();
  const Reflection* r = msg.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (!f->options().GetExtension(v1::required)) continue;
    bool present;
    if (f->is_repeated()) {
      present = r->FieldSize(msg, f) > 0;
    } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      present = r->HasField(msg, f);
    } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_STRING) {
      present = !r->GetString(msg, f).empty();
    } else {
      present = r->HasField(msg, f);
    }
    if (!present) {
      errors->push_back(absl::StrCat(JoinPath(path, f->name()), ": required key missing", Where(node)));
    }
  }
}

}  // namespace

std::string JoinPath(const std::string& path, const std::string& key) {
  return path.empty() ? key : absl::StrCat(path, ".", key);
}

std::string IndexPath(const std::string& path, size_t index) { return absl::StrCat(path, "[", index, "]"); }

void ParseYamlInto(const YAML::Node& node, Message* message, const std::string& path, std::vector<std::string>* errors,
                   std::vector<std::string>* leftover_keys) {
  if (node.IsNull() || !node.IsDefined()) {
    CheckRequired(node, *message, path, errors);
    return;
  }
  if (!node.IsMap()) {
    errors->push_back(
        absl::StrCat(path.empty() ? "config" : path, ": expected a mapping, found ", KindName(node), Where(node)));
    return;
  }
  const Descriptor* d = message->GetDescriptor();
  std::set<std::string> seen;
  for (const auto& kv : node) {
    if (!kv.first.IsScalar()) {
      errors->push_back(absl::StrCat(path, ": keys must be plain names", Where(kv.first)));
      continue;
    }
    const std::string& key = kv.first.Scalar();
    if (!seen.insert(key).second) {
      // YAML keeps one of the two silently; a person meant something by each.
      errors->push_back(absl::StrCat(JoinPath(path, key), ": given twice", Where(kv.first)));
      continue;
    }
    const FieldDescriptor* field = d->FindFieldByName(key);
    if (field == nullptr) {
      if (leftover_keys != nullptr) {
        leftover_keys->push_back(key);
      } else {
        errors->push_back(absl::StrCat(JoinPath(path, key), ": unknown key", Where(kv.first)));
      }
      continue;
    }
    const google::protobuf::OneofDescriptor* oneof = field->containing_oneof();
    if (oneof != nullptr) {
      const FieldDescriptor* set = message->GetReflection()->GetOneofFieldDescriptor(*message, oneof);
      if (set != nullptr) {
        errors->push_back(absl::StrCat(JoinPath(path, key), ": conflicts with '", set->name(),
                                       "' (only one of them may be given)", Where(kv.first)));
        continue;
      }
    }
    SetField(kv.second, message, field, JoinPath(path, key), errors);
  }
  CheckRequired(node, *message, path, errors);
}

YAML::Node LoadYaml(const std::string& text, const std::string& file_name, std::vector<std::string>* errors) {
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception& e) {
    errors->push_back(
        absl::StrCat(file_name, ":", e.mark.line + 1, ":", e.mark.column + 1, ": YAML syntax error: ", e.msg));
  } catch (const std::exception& e) {
    errors->push_back(absl::StrCat(file_name, ": ", e.what()));
  }
  return YAML::Node(YAML::NodeType::Null);
}

}  // namespace walshift::config
